"""The edit service: one request's whole way from a normalized request to a response body.

    route → EditRequest → (auth done by the route) → model + field checks → images resolved
    → price quote → admit (1 store round trip) → adapter → upstream → results stored
    → settle (1 store round trip) → response body

Every failure after `admit` settles with charge 0, so a failed request never costs anything,
and a cancelled one (client gone) is refunded too. Nothing here knows about HTTP frameworks.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from app.adapters.base import Adapter
from app.core.config import GatewayConfig
from app.core.errors import GatewayError
from app.core.logging import fields, get_logger
from app.core.metrics import Metrics
from app.domain.edit import EditOutput, EditRequest
from app.domain.metering import Hold, Keep, Meter
from app.domain.pricing import Quote, quote
from app.media.fetch import GuardedFetcher
from app.media.resolve import resolve_images
from app.media.spool import Spool
from app.results import Results
from app.service import idempotency, streaming
from app.service.context import EditContext, EditReply, Prepared
from app.storage import StorageError
from app.store.base import ApiKey, TaskRecord
from app.tasks.base import TASK_RETENTION_S, Task, task_record_bytes
from app.tasks.inputs import TaskInputs
from app.tasks.payload import decode_request, frame_request, request_fingerprint
from app.tasks.queue import TaskQueue

if TYPE_CHECKING:
    from app.upstream.caller import UpstreamCaller

log = get_logger("imagegate.edit")
# A task whose inputs are gone is settled with nothing charged; its price no longer matters.
_NO_QUOTE = Quote(tier="request", unit=0, units=1, per_request=True)


class EditService:
    def __init__(
        self,
        *,
        config: GatewayConfig,
        adapters: Mapping[str, Adapter],
        meter: Meter,
        fetcher: GuardedFetcher,
        results: Results,
        metrics: Metrics,
        tasks: TaskQueue,
        caller: UpstreamCaller,
        inputs: TaskInputs,
    ) -> None:
        self.config = config
        self.adapters = adapters
        self.meter = meter
        self.fetcher = fetcher
        self.results = results
        self.metrics = metrics
        self.tasks = tasks
        self.caller = caller
        self.inputs = inputs

    # --- checks, before any credit moves -------------------------------------------------
    def adapter_for(self, model: str) -> Adapter:
        adapter = self.adapters.get(model)
        if adapter is None:
            raise GatewayError(
                "api_not_implemented",
                f"model {model!r} is not available; choose one of: {', '.join(self.adapters)}",
                param="model",
            )
        return adapter

    async def prepare(self, key: ApiKey, req: EditRequest, spool: Spool | None = None) -> Prepared:
        adapter = self.adapter_for(req.model)
        self.meter.check_model(key, req.model)
        req = adapter.check_fields(req)  # model rules, before any image is fetched
        if req.callback_url is not None:
            await self.fetcher.check_url(req.callback_url, param="callback_url")
        if req.operation == "edit":  # a generation has no image inputs
            await resolve_images(req, self.fetcher, self.config.limits, spool)
            adapter.check_images(req)
        images = (req.n or 1) if adapter.native_n else 1
        price = quote(self.config.models[req.model], req.size, images)
        return Prepared(adapter, req, price, self._response_format(adapter, req))

    @staticmethod
    def _response_format(adapter: Adapter, req: EditRequest) -> str:
        if adapter.forced_response_format:
            return adapter.forced_response_format
        if req.response_format:
            return req.response_format
        if adapter.default_response_format:
            return adapter.default_response_format
        if req.operation == "generate":
            return "b64_json"  # what OpenAI's generations answer and the SDK reads
        # What each client expects: the OpenAI SDK (multipart) reads b64_json, the seed's
        # JSON server pipeline reads url.
        return "b64_json" if req.body_kind == "multipart" else "url"

    # --- the edit: synchronous, streamed, or queued with a callback --------------------
    async def edit(
        self, key: ApiKey, req: EditRequest, ctx: EditContext, idempotency_key: str | None = None
    ) -> EditReply:
        try:
            prep = await self.prepare(key, req, ctx.spool)
        except GatewayError as err:  # refused before any credit moved: still counted
            self.meter.count(req.model, err.code)
            raise
        task_id = str(uuid.uuid4())
        if idempotency_key is None:
            return await self._start(key, prep, task_id, ctx)
        return await idempotency.run_once(
            self.tasks,
            key_id=key.id,
            idem_key=idempotency_key,
            fingerprint=request_fingerprint(prep.req),
            task_id=task_id,
            trace_id=ctx.trace_id,
            ttl_s=self.config.tasks.idempotency_ttl_s,
            stale_after_s=self.config.metering.reservation_ttl_s,
            wait_s=self._idem_wait_s(prep),
            start=lambda: self._start(key, prep, task_id, ctx),
        )

    def _idem_wait_s(self, prep: Prepared) -> float:
        return self.config.routing.deadline_s + 30

    async def _start(
        self, key: ApiKey, prep: Prepared, task_id: str, ctx: EditContext
    ) -> EditReply:
        queued = prep.req.callback_url is not None
        hold_s = float(self.config.metering.reservation_ttl_s)
        if queued:
            hold_s += self.config.tasks.lease_s
        hold = await self.meter.admit(
            key,
            model=prep.req.model,
            quote=prep.quote,
            reservation_id=task_id,
            trace_id=ctx.trace_id,
            hold_s=hold_s,
            operation=prep.req.operation,
        )  # 402 / 429 / 503 are counted by the meter
        if queued:
            async with hold:
                await self._enqueue(prep, hold, task_id, ctx)
                hold.hand_over()  # the reservation is the queued task's now
            body = {"success": True, "task_id": task_id, "trace_id": ctx.trace_id}
            return EditReply(body, hold.headers)
        if prep.req.stream and prep.adapter.supports_stream():
            upstream = self.caller.stream(prep.adapter, prep.req, ctx.trace_id)
            return EditReply(None, hold.headers, streaming.relay(prep, hold, ctx, upstream))
        hold.keep = self._keeper(hold, task_id)
        async with hold:
            body = await self.run(prep, hold, task_id, ctx)
        return EditReply(body, hold.headers)

    @staticmethod
    def _keeper(hold: Hold, task_id: str) -> Keep:
        """How a synchronous request is kept as a finished task: its settle writes the record
        in the same store round trip, so `GET /v1/tasks/{id}` finds it as soon as we answer."""
        started = time.time()

        def keep(result: dict[str, Any] | None, error: dict[str, Any] | None) -> TaskRecord:
            task = Task(
                id=task_id, key_id=hold.key_id, trace_id=hold.trace_id, model=hold.model,
                created=started, started=started, finished=time.time(), attempts=1,
                status="succeeded" if error is None else "failed", result=result, error=error,
            )  # fmt: skip
            return TaskRecord(task_id, task_record_bytes(task), TASK_RETENTION_S)

        return keep

    async def _enqueue(self, prep: Prepared, hold: Hold, task_id: str, ctx: EditContext) -> None:
        task = Task(
            id=task_id,
            key_id=hold.key_id,
            trace_id=ctx.trace_id,
            model=prep.req.model,
            created=time.time(),
            callback_url=prep.req.callback_url,
        )
        q = prep.quote
        meta = {
            "quote": {
                "tier": q.tier,
                "unit": q.unit,
                "units": q.units,
                "per_request": q.per_request,
            },
            "response_format": prep.response_format,
            "base_url": ctx.base_url,
        }
        stashed = False
        try:
            # The images go to object storage; the queue keeps only a reference.
            ref = await self.inputs.stash(task_id, frame_request(prep.req, meta=meta))
            stashed = True
            await self.tasks.enqueue(task, ref)
        except Exception as exc:  # the hold refunds on the way out
            if stashed:
                await _quietly(self.inputs.drop(task_id))
            log.exception("task.enqueue.failed", extra=fields(trace_id=ctx.trace_id))
            raise GatewayError(
                "service_unavailable", "could not queue the task, try again", status=503
            ) from exc

    async def run_task(
        self, task: Task, payload: bytes
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The worker's handler for a queued edit: run it, settle it, return result or error.

        The reservation was made at submit time with the task id as its id. However often a
        task runs, it is charged once, and only if its result is delivered: a run that finds
        the reservation gone (refunded by an earlier run, or expired in the queue) reserves
        again before calling the upstream (402 if the balance no longer covers it); a run
        that finds it already charged (an earlier run settled, then died) runs and succeeds
        without a second charge.
        """
        loaded = await self.inputs.load(payload)
        if loaded is None:  # already finished elsewhere, or lost: never charge for it
            gone = GatewayError("api_error", "the task's inputs are gone; refunded")
            try:
                async with self.meter.hold(
                    reservation_id=task.id, key_id=task.key_id, model=task.model,
                    quote=_NO_QUOTE, trace_id=task.trace_id,
                ):  # fmt: skip
                    raise gone  # leaving the block unsettled refunds the reservation
            except GatewayError as err:
                return None, {"code": err.code, "message": err.message}
        req, meta = decode_request(loaded)
        q = meta["quote"]
        quote_ = Quote(
            tier=q["tier"], unit=q["unit"], units=q["units"], per_request=q["per_request"]
        )
        hold_s = self.config.metering.reservation_ttl_s + self.config.tasks.lease_s
        hold = self.meter.hold(
            reservation_id=task.id, key_id=task.key_id, model=req.model, quote=quote_,
            trace_id=task.trace_id, hold_s=hold_s, operation=req.operation,
        )  # fmt: skip
        try:
            async with hold:
                state = await self.meter.extend(hold, time.time() + hold_s)
                if state == "gone":
                    await self.meter.reserve_again(hold)
                adapter = self.adapter_for(req.model)
                prep = Prepared(adapter, req, quote_, str(meta["response_format"]))
                ctx = EditContext(trace_id=task.trace_id, base_url=str(meta["base_url"]))
                body = await self.run(prep, hold, task.id, ctx)
        except GatewayError as err:
            return None, {"code": err.code, "message": err.message}
        return task_result(body), None

    async def run(
        self, prep: Prepared, hold: Hold, task_id: str, ctx: EditContext
    ) -> dict[str, Any]:
        """Call upstream, keep the results, settle. The caller's `async with hold` refunds on
        every failure, cancellation included."""
        model = prep.req.model
        t0 = time.perf_counter()
        try:
            out = await self.caller.edit(prep.adapter, prep.req, ctx.trace_id)
        except GatewayError:
            raise
        except Exception as exc:
            log.exception("upstream.unexpected", extra=fields(trace_id=ctx.trace_id))
            raise GatewayError("api_error", "internal error while calling upstream") from exc
        upstream_s = time.perf_counter() - t0
        self.metrics.upstream_latency.observe(upstream_s, model=model)
        if not out.images:
            raise GatewayError("api_error", "upstream returned no image", status=502)
        body = await self.shape(prep, out, task_id, ctx)
        await hold.settle(
            len(out.images),
            task_result(body),
            usage=out.usage,
            size=prep.req.size,
            channel=out.channel,
        )
        self.metrics.gateway_latency.observe(
            max(0.0, time.perf_counter() - ctx.started - upstream_s), model=model
        )
        return body

    async def shape(
        self, prep: Prepared, out: EditOutput, task_id: str, ctx: EditContext
    ) -> dict[str, Any]:
        """The success body (docs/API.md); url results are stored and served by the gateway."""
        data: list[dict[str, Any]] = []
        as_url = prep.response_format == "url"
        for i, img in enumerate(out.images):
            # `revised_prompt` is always present: the prompt itself when the upstream kept it.
            item: dict[str, Any] = {"revised_prompt": img.revised_prompt or prep.req.prompt}
            if as_url:
                name = f"{task_id}_{i}.{img.ext}"
                try:
                    await self.results.put(name, img.data)
                except StorageError as exc:
                    log.warning("results.put.failed", extra=fields(trace_id=ctx.trace_id))
                    raise GatewayError(
                        "service_unavailable", "result storage is unavailable", status=503
                    ) from exc
                item["url"] = self.results.url(name, ctx.base_url)
            else:
                item["b64_json"] = base64.b64encode(img.data).decode("ascii")
            data.append(item)
        body: dict[str, Any] = {
            "success": True,
            "task_id": task_id,
            "trace_id": ctx.trace_id,
            "created": out.created,
            "data": data,
        }
        for k in ("usage", "size", "quality", "output_format", "background"):
            if out.extra.get(k) is not None:
                body[k] = out.extra[k]
        body["elapsed"] = round(time.perf_counter() - ctx.started, 3)
        return body


async def _quietly(aw: Awaitable[object]) -> None:
    try:
        await aw
    except Exception:
        log.warning("cleanup.failed", exc_info=True)


def task_result(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-shaped part of a success body: what a callback's `data` and a task hold."""
    keep = ("created", "data", "usage", "size", "quality", "output_format", "background")
    return {k: body[k] for k in keep if k in body}
