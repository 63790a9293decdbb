"""Channel kinds: where an adapter's action lives on each provider, and how it authenticates.

- `openai` (OpenAI protocol): `{base}/{action}`, `Authorization: Bearer {key}`
- `azure-openai` (OpenAI protocol): `{base}/openai/deployments/{deployment}/{action}
  ?api-version={api_version}`, header `api-key`
- `gemini` (Gemini protocol): `{base}/models/{id}:{action}`, header `x-goog-api-key`
- `vertex` with a key: `{base}/publishers/google/models/{id}:{action}`, `x-goog-api-key`
- `vertex` with a service account: `{base}/projects/{p}/locations/{l}/publishers/google/
  models/{id}:{action}`, `Authorization: Bearer {token}`

A streamed Gemini action is `streamGenerateContent?alt=sse`. Service-account tokens are minted
by google-auth, cached, and refreshed `REFRESH_MARGIN_S` before they expire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from app.core.config import UpstreamConfig

PROTOCOL = {"openai": "openai", "azure-openai": "openai", "gemini": "gemini", "vertex": "gemini"}
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
REFRESH_MARGIN_S = 300.0


def deployment(config: UpstreamConfig, gateway_model: str, model_id: str) -> str:
    """Azure: `deployments[model]` (gateway name, then upstream id), else the upstream id."""
    return config.deployments.get(gateway_model) or config.deployments.get(model_id) or model_id


def url_for(
    config: UpstreamConfig, action: str, model_id: str, gateway_model: str, stream: bool
) -> str:
    base = config.base_url
    kind = config.kind
    if kind == "openai":
        return f"{base}/{action}"
    if kind == "azure-openai":
        dep = deployment(config, gateway_model, model_id)
        return f"{base}/openai/deployments/{dep}/{action}?api-version={config.api_version}"
    method = f"stream{action[0].upper()}{action[1:]}?alt=sse" if stream else action
    if kind == "gemini":
        return f"{base}/models/{model_id}:{method}"
    prefix = base
    if config.service_account:
        prefix = f"{base}/projects/{config.project}/locations/{config.location}"
    return f"{prefix}/publishers/google/models/{model_id}:{method}"


def key_header(kind: str, secret: str) -> tuple[str, str]:
    """The header an API key travels in for this kind."""
    if kind == "openai":
        return "authorization", f"Bearer {secret}"
    if kind == "azure-openai":
        return "api-key", secret
    return "x-goog-api-key", secret


class ServiceAccountToken:
    """OAuth2 access tokens for a Google service account, cached until shortly before expiry.

    google-auth signs the JWT assertion and exchanges it at the key file's `token_uri`; its
    blocking refresh runs in a thread, one at a time per channel.
    """

    def __init__(self, credentials_file: str) -> None:
        from google.oauth2 import service_account

        self._creds: Any = service_account.Credentials.from_service_account_file(
            credentials_file, scopes=[SCOPE]
        )
        self._lock = asyncio.Lock()
        self.email: str = self._creds.service_account_email
        self.quota_project: str | None = getattr(self._creds, "quota_project_id", None)

    def _fresh(self) -> bool:
        expiry = self._creds.expiry  # naive UTC
        if not self._creds.token or expiry is None:
            return False
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        return (expiry - now).total_seconds() > REFRESH_MARGIN_S

    async def headers(self) -> dict[str, str]:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await asyncio.to_thread(self._refresh)
        out = {"authorization": f"Bearer {self._creds.token}"}
        if self.quota_project:
            out["x-goog-user-project"] = self.quota_project
        return out

    def _refresh(self) -> None:
        import google.auth.transport.requests

        self._creds.refresh(google.auth.transport.requests.Request())
