"""One error type for the whole gateway, and the one envelope every error is answered with.

Domain code raises `GatewayError` with a code from `STATUS_BY_CODE` (docs/API.md, "Errors");
the HTTP layer turns it into `{"success": false, "error": {...}, "trace_id": ...}` with the
matching status. Nothing else ever reaches a client, so no stack trace or upstream secret can
leak.
"""

from __future__ import annotations

from typing import Any

# code -> default HTTP status (the table in docs/API.md, "Errors")
STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "token_mismatched": 400,
    "api_not_implemented": 400,
    "moderation_blocked": 400,
    "invalid_token": 401,
    "insufficient_credits": 402,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "too_many_requests": 429,
    "api_error": 500,
    "service_unavailable": 503,
    "upstream_timeout": 504,
}

# code -> OpenAI-style error "type" (the SDK reads only message/code, but clients log type)
TYPE_BY_CODE: dict[str, str] = {
    "invalid_token": "authentication_error",
    "insufficient_credits": "insufficient_quota",
    "too_many_requests": "rate_limit_error",
    "moderation_blocked": "image_generation_user_error",
    "api_error": "api_error",
    "upstream_timeout": "api_error",
    "service_unavailable": "api_error",
}


class GatewayError(Exception):
    """A failure with a client-facing code, message and (optionally) the offending parameter."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 500)
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return TYPE_BY_CODE.get(self.code, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "type": self.type, "param": self.param}

    def __repr__(self) -> str:
        return f"GatewayError({self.code!r}, {self.message!r}, param={self.param!r})"


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError("bad_request", message, param=param)


def too_large(message: str, param: str | None = None) -> GatewayError:
    return GatewayError("payload_too_large", message, param=param)


def envelope(err: GatewayError, trace_id: str) -> dict[str, Any]:
    return {"success": False, "error": err.body(), "trace_id": trace_id}
