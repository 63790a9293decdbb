"""The gateway's domain: the normalized edit request, pricing, metering and the edit service.

Nothing here imports FastAPI or Starlette; the HTTP layer translates to and from these types.
"""
