"""One pooled HTTP client per upstream, with bounded concurrency and careful retries.

Why this exists rather than a bare `httpx.AsyncClient` per call:
- connection reuse: an edit uploads up to hundreds of MB; a warm keep-alive pool saves the TCP/TLS
  handshake on every request, and the pool size bounds sockets per upstream;
- back-pressure: a semaphore caps in-flight calls at `max_concurrency`, so a burst queues here
  instead of opening unbounded connections (and the pool never times out waiting for itself);
- retries only where they are safe and useful: 429, 5xx, connection errors and timeouts. Other 4xx
  mean the request itself is wrong and would fail again, so they go straight back to the adapter;
- the credential lives only here: adapters never see the API key, and nothing here logs headers.

The buffered `request()` path (every non-streaming edit) goes through `Http11Pool`, a lean
asyncio + httptools HTTP/1.1 client: the body is built in memory and the answer is read whole,
so httpx's layers (httpcore, anyio, h11) cost far more CPU than they buy there. httpx stays for
`stream()` (SSE edits are rare) and whenever a custom `transport` is injected (tests).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx
import orjson

from app.core.config import GatewayConfig, UpstreamConfig
from app.core.errors import GatewayError
from app.upstream.http11 import Http11Pool

log = logging.getLogger("imagegate.upstream")

SSEEvent = tuple[str, dict[str, Any]]

USER_AGENT = "imagegate/0.1"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the upstream asked to wait: `retry-after-ms`, else `retry-after` (secs or date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(slots=True)
class UpstreamResponse:
    """A fully read upstream answer: the adapter decides what its status means."""

    status: int
    headers: Mapping[str, str]  # case-insensitive: `httpx.Headers` or `Http11Headers`
    body: bytes
    elapsed: float  # seconds from the first attempt to the final answer
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """Parse the body; raises `orjson.JSONDecodeError` (a `ValueError`) if it is not JSON."""
        return orjson.loads(self.body)

    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers)


class UpstreamStream:
    """An open streaming answer. On a non-2xx status `response` holds the read error body and
    `events()` yields nothing; on success `events()` yields the upstream's SSE events."""

    def __init__(self, http_response: httpx.Response, response: UpstreamResponse, name: str):
        self._http = http_response
        self.response = response
        self._name = name

    @property
    def ok(self) -> bool:
        return self.response.ok

    async def events(self) -> AsyncIterator[SSEEvent]:
        """Parse `text/event-stream` into `(event, data)`; stops at `data: [DONE]`.

        `event` is the SSE event name, else the data's `type`, else "message". Mid-stream
        timeouts and disconnects become gateway errors so the caller can send an error event.
        """
        if not self.response.ok:
            return
        event: str | None = None
        data_lines: list[str] = []
        try:
            async for line in self._http.aiter_lines():
                if line == "":
                    if data_lines:
                        parsed = self._dispatch(event, data_lines)
                        if parsed is None:
                            return
                        yield parsed
                    event, data_lines = None, []
                    continue
                if line.startswith(":"):
                    continue  # comment / keep-alive
                field, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if field == "event":
                    event = value
                elif field == "data":
                    data_lines.append(value)
            if data_lines:
                parsed = self._dispatch(event, data_lines)
                if parsed is not None:
                    yield parsed
        except httpx.TimeoutException:
            raise GatewayError(
                "upstream_timeout", f"upstream {self._name} timed out mid-stream", status=504
            ) from None
        except httpx.TransportError:
            raise GatewayError(
                "api_error", f"upstream {self._name} stream interrupted", status=502
            ) from None

    def _dispatch(self, event: str | None, data_lines: list[str]) -> SSEEvent | None:
        raw = "\n".join(data_lines)
        if raw.strip() == "[DONE]":
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(
                "api_error", f"upstream {self._name} sent a malformed stream event", status=502
            ) from None
        if not isinstance(data, dict):
            raise GatewayError(
                "api_error", f"upstream {self._name} sent a malformed stream event", status=502
            )
        name = event or data.get("type") or "message"
        return str(name), data


# A request body: one buffer, or pieces sent in order without being joined.
Body = bytes | Sequence[bytes]


def _proxied(url: str) -> bool:
    """Whether the environment routes `url` through a proxy (as httpx would honour it)."""
    proxies = urllib.request.getproxies()
    if not proxies:
        return False
    host = httpx.URL(url).host
    if urllib.request.proxy_bypass(host):
        return False
    return bool(proxies.get(httpx.URL(url).scheme) or proxies.get("all"))


class UpstreamClient:
    """Pooled, concurrency-bounded, retrying HTTP client for one configured upstream."""

    RETRY_AFTER_CAP_S: ClassVar[float] = 30.0  # never sleep longer than this on Retry-After
    BACKOFF_CAP_S: ClassVar[float] = 30.0

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.kind = config.kind
        self.base_url = config.base_url.rstrip("/")
        self._auth = self._auth_headers(config)
        self._sem = asyncio.Semaphore(config.max_concurrency)
        self._http = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(
                max_connections=config.max_concurrency,
                max_keepalive_connections=config.max_concurrency,
                keepalive_expiry=60.0,
            ),
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            headers={"user-agent": USER_AGENT},
            follow_redirects=False,
        )
        # The fast path for buffered requests; an injected transport keeps httpx in charge so
        # tests that mock the transport still see every request, and so does an outbound proxy
        # from the environment (HTTPS_PROXY etc.: the lean pool connects directly only).
        self._pool: Http11Pool | None = None
        if transport is None and not _proxied(self.base_url):
            self._pool = Http11Pool(
                self.base_url,
                max_connections=config.max_concurrency,
                connect_timeout_s=config.connect_timeout_s,
                timeout_s=config.timeout_s,
                keepalive_expiry_s=60.0,
                user_agent=USER_AGENT,
            )

    def __repr__(self) -> str:  # never the key
        return f"UpstreamClient({self.name!r}, kind={self.kind!r}, base_url={self.base_url!r})"

    @staticmethod
    def _auth_headers(config: UpstreamConfig) -> dict[str, str]:
        if not config.api_key:
            return {}
        if config.kind == "gemini":
            return {"x-goog-api-key": config.api_key}
        return {"authorization": f"Bearer {config.api_key}"}

    def redact(self, text: str) -> str:
        """Remove the API key from text that may echo it (upstream error messages)."""
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _prepare(
        self, headers: Mapping[str, str] | None, content: Body | None, json: Any
    ) -> tuple[httpx.Headers, bytes | None]:
        merged = httpx.Headers(headers)
        if content is not None and not isinstance(content, bytes):
            content = b"".join(content)  # httpx wants one buffer
        if json is not None:
            content = orjson.dumps(json)
            merged.setdefault("content-type", "application/json")
        for key, value in self._auth.items():
            merged[key] = value  # case-insensitive replace: callers cannot override the credential
        return merged, content

    def _prepare_fast(
        self, headers: Mapping[str, str] | None, content: Body | None, json: Any
    ) -> tuple[dict[str, str], Body | None]:
        """`_prepare` for the `Http11Pool` path: same merge rules, a plain dict instead of
        `httpx.Headers` (names lower-cased, so the replace stays case-insensitive)."""
        merged = {k.lower(): v for k, v in headers.items()} if headers else {}
        if json is not None:
            content = orjson.dumps(json)
            merged.setdefault("content-type", "application/json")
        merged.update(self._auth)  # the keys are lower-case: callers cannot override them
        return merged, content

    @staticmethod
    def _should_retry(status: int, headers: Mapping[str, str]) -> bool:
        if status != 429 and status < 500:
            return False
        return headers.get("x-should-retry", "").lower() != "false"

    def _delay(self, attempt: int, headers: Mapping[str, str] | None = None) -> float:
        """Retry-After when given (capped), else exponential backoff with equal jitter."""
        if headers is not None:
            hinted = parse_retry_after(headers)
            if hinted is not None:
                return min(hinted, self.RETRY_AFTER_CAP_S)
        base = min(self.config.backoff_s * (2**attempt), self.BACKOFF_CAP_S)
        return base / 2 + random.uniform(0, base / 2)

    def _timeout_error(self) -> GatewayError:
        return GatewayError("upstream_timeout", f"upstream {self.name} timed out", status=504)

    def _unreachable_error(self) -> GatewayError:
        return GatewayError("api_error", "upstream unreachable", status=502)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: Body | None = None,
        json: Any = None,
    ) -> UpstreamResponse:
        """Send with retries; return the final answer whatever its status.

        Raises `GatewayError` only when no answer was obtained: 504 `upstream_timeout` after
        timeouts, 502 `api_error` after connection failures.
        """
        pool = self._pool
        req_headers: Mapping[str, str]
        resp_headers: Mapping[str, str]
        if pool is not None:
            req_headers, body = self._prepare_fast(headers, content, json)
        else:
            req_headers, body = self._prepare(headers, content, json)
        url = self.url(path)
        attempts = self.config.retries + 1
        start = time.monotonic()
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                async with self._sem:
                    if pool is not None:
                        answer = await pool.request(method, url, headers=req_headers, body=body)
                        status, resp_headers, resp_body = answer.status, answer.headers, answer.body
                    else:
                        resp = await self._http.request(
                            method, url, headers=req_headers, content=body
                        )
                        status, resp_headers, resp_body = (
                            resp.status_code,
                            resp.headers,
                            resp.content,
                        )
            except httpx.TimeoutException as exc:
                if last:
                    raise self._timeout_error() from exc
                log.warning("upstream %s timeout (attempt %d), retrying", self.name, attempt + 1)
                await asyncio.sleep(self._delay(attempt))
                continue
            except httpx.TransportError as exc:
                if last:
                    raise self._unreachable_error() from exc
                log.warning(
                    "upstream %s connection error %s (attempt %d), retrying",
                    self.name,
                    type(exc).__name__,
                    attempt + 1,
                )
                await asyncio.sleep(self._delay(attempt))
                continue
            if not last and self._should_retry(status, resp_headers):
                log.warning(
                    "upstream %s answered %d (attempt %d), retrying",
                    self.name,
                    status,
                    attempt + 1,
                )
                await asyncio.sleep(self._delay(attempt, resp_headers))
                continue
            return UpstreamResponse(
                status=status,
                headers=resp_headers,
                body=resp_body,
                elapsed=time.monotonic() - start,
                attempts=attempt + 1,
            )
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns/raises

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
    ) -> AsyncIterator[UpstreamStream]:
        """Open a streaming request; retries happen only before the first byte of a 2xx answer.

        Holds a concurrency slot until the context exits. Use as::

            async with client.stream("POST", "/images/edits", content=body) as up:
                if not up.ok: raise map_error(up.response)
                async for event, data in up.events(): ...
        """
        req_headers, body = self._prepare(headers, content, json)
        url = self.url(path)
        attempts = self.config.retries + 1
        start = time.monotonic()
        resp: httpx.Response | None = None
        for attempt in range(attempts):
            last = attempt == attempts - 1
            await self._sem.acquire()
            try:
                request = self._http.build_request(method, url, headers=req_headers, content=body)
                resp = await self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                self._sem.release()
                if last:
                    raise self._timeout_error() from exc
                await asyncio.sleep(self._delay(attempt))
                continue
            except httpx.TransportError as exc:
                self._sem.release()
                if last:
                    raise self._unreachable_error() from exc
                await asyncio.sleep(self._delay(attempt))
                continue
            except BaseException:
                self._sem.release()
                raise
            if not last and self._should_retry(resp.status_code, resp.headers):
                await resp.aclose()
                self._sem.release()
                await asyncio.sleep(self._delay(attempt, resp.headers))
                continue
            break
        assert resp is not None
        try:
            error_body = b""
            if not 200 <= resp.status_code < 300:
                try:
                    error_body = await resp.aread()
                except httpx.TimeoutException as exc:
                    raise self._timeout_error() from exc
                except httpx.TransportError as exc:
                    raise self._unreachable_error() from exc
            summary = UpstreamResponse(
                status=resp.status_code,
                headers=resp.headers,
                body=error_body,
                elapsed=time.monotonic() - start,
                attempts=attempt + 1,
            )
            yield UpstreamStream(resp, summary, self.name)
        finally:
            await resp.aclose()
            self._sem.release()

    async def aclose(self) -> None:
        try:
            await self._http.aclose()
        finally:
            if self._pool is not None:
                await self._pool.aclose()

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def build_clients(config: GatewayConfig) -> dict[str, UpstreamClient]:
    """One client per configured upstream, keyed by the upstream's name in the config."""
    return {name: UpstreamClient(name, upstream) for name, upstream in config.upstreams.items()}
