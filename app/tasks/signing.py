"""Callback signatures: `X-Imagegate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.

The MAC covers `"<t>.<body>"` with the key's webhook secret, so a receiver can check both who
sent the body and when (a captured delivery replayed later fails the timestamp check). This
module is what the README shows a receiver copying; keep `verify` short.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Imagegate-Signature"


def _mac(secret: str, body: bytes, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int) -> str:
    """The header value for `body` sent at unix time `t`."""
    return f"t={t},v1={_mac(secret, body, t)}"


def verify(
    secret: str, body: bytes, header: str, *, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """True if `header` signs exactly `body` with `secret`, within `tolerance_s` of now."""
    try:
        parts = dict(item.strip().split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(_mac(secret, body, t), parts.get("v1", ""))
