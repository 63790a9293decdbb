"""Console sign-in: sessions kept in the store (so every replica honours them), the cookie that
names them, and the checks that make cookie-authenticated changes safe from cross-site forgery.

The cookie holds a random token; the store keeps its sha256 only. Every state-changing request
made with the cookie must carry the session's CSRF token (header `X-CSRF-Token` or form field
`csrf`) AND come from the gateway's own origin (`Origin` header). The cookie is HttpOnly and
SameSite=Strict on top of that.
"""

from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import urlsplit

from app.store.base import ApiKey, ConsoleSession, Store, hash_secret

COOKIE = "imagegate_session"
#: How long a console session lives (seconds); signing in again starts a new one.
SESSION_TTL_S = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def start(
    store: Store, role: str, key: ApiKey | None = None, *, admin_key: str = ""
) -> tuple[str, ConsoleSession]:
    """A new session; returns the cookie token (shown to the browser only) and the session.
    An admin session remembers which admin key opened it (its hash), so rotating the admin key
    ends every admin session at once."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    session = ConsoleSession(
        id_hash=hash_secret(token),
        role="admin" if role == "admin" else "key",
        csrf=secrets.token_urlsafe(24),
        created_at=now,
        expires_at=now + SESSION_TTL_S,
        key_id=key.id if key is not None else None,
        credential=hash_secret(admin_key) if role == "admin" else "",
    )
    await store.put_session(session, now)
    return token, session


async def lookup(store: Store, token: str | None, admin_key: str) -> ConsoleSession | None:
    """The live session `token` names; an admin session opened with another admin key than
    the current one is over."""
    if not token or len(token) > 200:
        return None
    session = await store.get_session(hash_secret(token), time.time())
    if session is not None and session.role == "admin":
        current = hash_secret(admin_key)
        if not hmac.compare_digest(session.credential.encode(), current.encode()):
            return None
    return session


async def end(store: Store, token: str | None) -> None:
    if token and len(token) <= 200:
        await store.delete_session(hash_secret(token))


def csrf_ok(session: ConsoleSession, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())


def same_origin(origin: str | None, host: str | None, public_base_url: str | None) -> bool:
    """The request comes from a page of this gateway: its `Origin` names the host the browser
    talked to (the `Host` header) or the configured public base URL."""
    if not origin or origin == "null":
        return False
    netloc = urlsplit(origin).netloc.lower()
    if host and netloc == host.lower():
        return True
    return bool(public_base_url) and netloc == urlsplit(public_base_url or "").netloc.lower()
