"""Callback signatures: what a receiver checks."""

from __future__ import annotations

import hashlib
import hmac

from app.tasks.signing import sign, verify

SECRET = "whsec_test"
BODY = b'{"success":true,"task_id":"t1"}'


def test_header_format_is_the_documented_hmac() -> None:
    header = sign(SECRET, BODY, 1700000000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_fresh_signature() -> None:
    header = sign(SECRET, BODY, 1700000000)
    assert verify(SECRET, BODY, header, now=1700000000)
    assert verify(SECRET, BODY, header, now=1700000299)
    assert verify(SECRET, BODY, header.replace(",", ", "), now=1700000000)


def test_verify_refuses_tampering_and_old_or_broken_headers() -> None:
    header = sign(SECRET, BODY, 1700000000)
    assert not verify(SECRET, BODY + b" ", header, now=1700000000)
    assert not verify("other-secret", BODY, header, now=1700000000)
    assert not verify(SECRET, BODY, header, now=1700000301)  # too old: a replay
    assert not verify(SECRET, BODY, header, now=1699999000)  # from the future
    forged = header.replace("t=1700000000", "t=1700000100")
    assert not verify(SECRET, BODY, forged, now=1700000100)
    for bad in ["", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000"]:
        assert not verify(SECRET, BODY, bad, now=1700000000)
