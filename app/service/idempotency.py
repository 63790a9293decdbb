"""`Idempotency-Key`: the first request with a key runs, identical twins get its answer.

The handshake lives in the task store (`idem_begin` / `idem_finish` / `idem_abort`): a twin
that arrives while the first is still running waits for its answer (polling), a twin with a
different body is a 409, and a first request that fails before it was accepted (402, 429,
upstream error) gives the key back so a retry can run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson

from app.core.errors import GatewayError
from app.core.logging import fields, get_logger
from app.domain.metering import unavailable
from app.service.context import EditReply
from app.tasks.idempotency import IdempotencyRecords

log = get_logger("imagegate.edit")

POLL_S = 0.05


async def run_once(
    tasks: IdempotencyRecords,
    *,
    key_id: str,
    idem_key: str,
    fingerprint: str,
    task_id: str,
    trace_id: str,
    ttl_s: float,
    stale_after_s: float,
    wait_s: float,
    start: Callable[[], Awaitable[EditReply]],
) -> EditReply:
    """Run `start` as the owner of (`key_id`, `idem_key`), or answer with the owner's reply."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = await tasks.idem_begin(
                key_id, idem_key, fingerprint, task_id=task_id, now=time.time(),
                ttl_s=ttl_s, stale_after_s=stale_after_s,
            )  # fmt: skip
        except Exception as exc:  # the task store is down: fail closed, like metering
            log.warning("idempotency.unavailable", extra=fields(trace_id=trace_id))
            raise unavailable() from exc
        if state.kind == "new":
            break
        if state.kind == "conflict":
            raise GatewayError(
                "conflict",
                "Idempotency-Key was already used with a different request",
                param="Idempotency-Key",
            )
        if state.kind == "done" and state.response is not None:
            first = orjson.loads(state.response).get("trace_id")
            return EditReply(
                None, {"idempotent-replayed": "true"}, raw=state.response, trace_id=first
            )
        if time.monotonic() > deadline:
            raise GatewayError(
                "conflict",
                "a request with this Idempotency-Key is still in progress",
                param="Idempotency-Key",
                headers={"retry-after": "1"},
            )
        await asyncio.sleep(POLL_S)
    try:
        reply = await start()
    except BaseException:
        await asyncio.shield(tasks.idem_abort(key_id, idem_key, task_id))
        raise
    if reply.body is not None:
        await tasks.idem_finish(key_id, idem_key, orjson.dumps(reply.body))
    else:  # a stream cannot be replayed; let a retry run again
        await tasks.idem_abort(key_id, idem_key, task_id)
    return reply
