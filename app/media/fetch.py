"""The guarded fetcher: every outbound request the gateway makes on a client's behalf.

The policy users see is documented in docs/API.md, "Limits".

Image URLs and callback URLs are chosen by clients, so each one is a potential SSRF: a request to
`http://169.254.169.254/` or `http://127.0.0.1:6379/` from inside the deployment. The guard:

1. accepts only http and https;
2. turns the host into addresses: an IP literal in any spelling a resolver would accept
   (`2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`) is parsed here, a name is
   resolved once (asynchronously, resolver injectable);
3. refuses the URL if *any* address is loopback, private, link-local, shared, multicast,
   reserved, unspecified or a cloud-metadata endpoint (IPv4-in-IPv6 forms are unwrapped);
4. pins the connection to the checked addresses. The URL keeps its host name (so `Host`, TLS
   SNI, certificate checks and the keep-alive pool key all use the name), but the network backend
   underneath never resolves anything: it connects to the addresses pinned for that exact host
   and port for this request (in order, up to three), and refuses any connection without a pin.
   A second DNS answer can therefore never be used (no DNS rebinding), and a parser
   disagreement about the host fails closed instead of reaching an unchecked address;
5. follows redirects itself, re-running 1-4 for every hop, at most `max_redirects` times;
6. caps the body while streaming and bounds the whole exchange with a total timeout.

The connection pool is httpcore's (the engine under httpx), used directly because pinning needs
a custom network backend, which httpx's transport does not expose. URLs are still parsed by
`httpx.URL` and handed to httpcore component by component, so there is one parser.

`allow_private=True` (IMAGEGATE_ALLOW_PRIVATE_URLS) skips step 3 only; pinning stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from app.core.errors import GatewayError, bad_request, too_large
from app.domain.blob import Blob
from app.media.spool import Sink, Spool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

USER_AGENT = "imagegate/0.1 (+image fetch)"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONNECT_TIMEOUT_S = 10.0
_MAX_DRAIN_BYTES = 64 * 1024  # of a webhook's answer; the rest is dropped with the connection


class _UnresolvedError(GatewayError):
    """The host did not resolve: a 400 for image URLs, a retryable `FetchError` for webhooks."""


class FetchError(Exception):
    """A connection-level failure (refused, reset, timed out) of `GuardedFetcher.post`.

    Webhook delivery treats it as retryable; a refused *address* is a `GatewayError` instead,
    because retrying cannot make it allowed.
    """


# --------------------------------------------------------------------------- address policy

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Cloud metadata and platform endpoints, named explicitly because several of them sit in ranges
# that look harmless (Azure's wireserver is a public address, Oracle's is in 192.0.0.0/24).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "168.63.129.16",  # Azure wireserver
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)

_V4_RULES: tuple[tuple[_V4, str], ...] = tuple(
    (_V4(net), why)
    for net, why in (
        ("0.0.0.0/8", "an unspecified address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "a broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_V6_RULES: tuple[tuple[_V6, str], ...] = tuple(
    (_V6(net), why)
    for net, why in (
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("fc00::/7", "a private (unique local) address"),
        ("ff00::/8", "a multicast address"),
    )
)
# IPv6 ranges that carry an IPv4 address in their low 32 bits: the IPv4 address decides.
_V4_EMBEDDING: tuple[tuple[_V6, str], ...] = (
    (_V6("::ffff:0:0/96"), "IPv4-mapped"),
    (_V6("::/96"), "IPv4-compatible"),
    (_V6("64:ff9b::/96"), "NAT64"),
)


def refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be contacted from the gateway ("a loopback address"), or None if public.

    Pure and synchronous so the whole policy can be tested for every address form without a
    single connection.
    """
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_reason(ip)
    return _v6_reason(ip)


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for v4net, why in _V4_RULES:
        if ip in v4net:
            return why
    return None if ip.is_global else "a reserved (non-public) address"


def _v6_reason(ip: ipaddress.IPv6Address) -> str | None:
    if ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    for net, why in _V6_RULES:
        if ip in net:
            return why
    for net, label in _V4_EMBEDDING:
        if ip in net:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            inner_why = refusal_reason(inner)
            if inner_why is None and label == "IPv4-compatible":
                inner_why = "a deprecated IPv4-compatible address"
            return f"{label} {inner}, {inner_why}" if inner_why else None
    if ip.sixtofour is not None:
        inner_why = refusal_reason(ip.sixtofour)
        return f"6to4 for {ip.sixtofour}, {inner_why}" if inner_why else None
    return None if ip.is_global else "a reserved (non-public) address"


_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)")


def parse_ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """Parse every IPv4 spelling `inet_aton` and browsers accept: 1-4 parts, each decimal,
    octal (leading 0) or hex (0x), the last part filling the remaining bytes.

    Returns None when `host` is a name. A host whose last label is a number but that is not a
    valid address (`1.2.3.4.5`, `999.1.1.1`) raises ValueError: it is not a usable name either,
    and letting it reach a resolver would invite a different interpretation.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # trailing dot
    if not _NUMBER.fullmatch(parts[-1]):
        return None
    if len(parts) > 4:
        raise ValueError("too many parts")
    numbers = [_ipv4_part(p) for p in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError("part out of range")
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _ipv4_part(part: str) -> int:
    if not part:
        raise ValueError("empty part")
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part[1:], 8)
    if not part.isdigit():
        raise ValueError("not a number")
    return int(part)


def _host_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, or None if it is a name to resolve."""
    if ":" in host:
        return ipaddress.IPv6Address(unquote(host).split("%", 1)[0])
    return parse_ipv4_literal(host)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the OS resolver in the loop's executor (never blocks the event loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# --------------------------------------------------------------------------- pinned connections


@dataclass(frozen=True, slots=True)
class _Pin:
    host: str  # the host exactly as httpcore will ask for it (IDNA/ASCII, no brackets)
    port: int
    addresses: tuple[str, ...]  # all checked; tried in order (a dead IPv6 route falls back)


_PIN: ContextVar[_Pin | None] = ContextVar("imagegate_fetch_pin", default=None)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that only connects to the addresses pinned for the current request.

    The pin is set in a context variable by `GuardedFetcher` around each request, so it is seen
    by exactly the task that makes that request. No pin, or a pin for another host/port, is a
    refused connection: nothing this pool does can reach an unchecked address. `inner` does the
    actual connecting (tests swap it to observe or redirect connections).
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.host != host.lower() or pin.port != port:
            raise httpcore.ConnectError(f"refusing an unchecked connection to {host}:{port}")
        error: Exception | None = None
        for address in pin.addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                error = exc
        assert error is not None  # a pin always holds at least one address
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used by the guarded fetcher")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass(frozen=True, slots=True)
class _Target:
    """A checked URL, ready to request: httpcore's URL pieces plus the pinned address."""

    url: httpcore.URL
    host_header: bytes
    pin: _Pin
    httpx_url: httpx.URL


# --------------------------------------------------------------------------- the fetcher


class GuardedFetcher:
    """Fetches client-supplied URLs under the SSRF policy in the module docstring.

    Create one per process and share it: it owns one keep-alive connection pool, keyed by
    host name (never by address, so two names on one address never share a TLS session).

    `resolver` replaces the OS resolver (tests simulate DNS with it); `network_backend` does the
    actual connecting underneath the pin (tests observe or reroute connections with it);
    `ssl_context` replaces the default certifi-based one (e.g. for a private CA).
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_s: float = 30,
        max_redirects: int = 3,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self._resolve = resolver or system_resolver
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=30.0,
            network_backend=PinnedBackend(network_backend),
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    # ----------------------------------------------------------------- public operations

    async def check_url(self, url: str, *, param: str) -> None:
        """Refuse (400, naming `param`) a URL the fetcher would not contact. Nothing is sent."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._target(url, param)
        except TimeoutError:
            raise bad_request(f"{param}: resolving the URL's host timed out", param) from None

    async def fetch(
        self,
        url: str,
        *,
        param: str,
        max_bytes: int,
        spool: Spool | None = None,
        spool_threshold: int = 0,
    ) -> Blob:
        """GET `url` and return its body, following at most `max_redirects` checked redirects.
        A body larger than `spool_threshold` (declared, or as it grows) is written to `spool`
        as it arrives and returned as a `SpooledBlob`.

        400 `bad_request` for a refused URL, a failed connection, a timeout or a non-2xx answer;
        413 `payload_too_large` as soon as the body passes `max_bytes`.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(url, param, max_bytes, spool, spool_threshold)
        except (TimeoutError, httpcore.TimeoutException):
            raise bad_request(
                f"{param}: fetching the URL timed out after {self.timeout_s:g}s", param
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise bad_request(
                f"{param}: fetching the URL failed: {_describe(exc)}", param
            ) from None

    async def post(
        self, url: str, *, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> int:
        """POST `body` to a checked, pinned address and return the status; redirects are not
        followed (a webhook that redirects did not accept the delivery).

        Raises `GatewayError` if the URL is refused, `FetchError` if the host does not resolve,
        the connection fails, or the exchange takes longer than `timeout_s`.
        """
        send = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        send.setdefault("User-Agent", USER_AGENT)
        send["Content-Length"] = str(len(body))
        try:
            async with asyncio.timeout(timeout_s):
                target = await self._target(url, "callback_url")
                async with self._stream(target, "POST", send, body, timeout_s) as response:
                    drained = 0  # read a short answer so the connection can be reused
                    async for chunk in response.aiter_stream():
                        drained += len(chunk)
                        if drained > _MAX_DRAIN_BYTES:
                            break
                    return response.status
        except _UnresolvedError as exc:  # DNS may recover: retryable, unlike a refused address
            raise FetchError(exc.message) from exc
        except (TimeoutError, httpcore.TimeoutException) as exc:
            raise FetchError(f"timed out after {timeout_s:g}s") from exc
        except (
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
        ) as exc:
            raise FetchError(_describe(exc)) from exc

    # ----------------------------------------------------------------- internals

    async def _fetch(
        self, url: str, param: str, max_bytes: int, spool: Spool | None, spool_threshold: int
    ) -> Blob:
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "image/png, image/jpeg, image/webp, */*;q=0.5",
            "Accept-Encoding": "identity",  # bodies are counted as sent, never inflated
        }
        current = url
        for _hop in range(self.max_redirects + 1):
            target = await self._target(current, param)
            async with self._stream(target, "GET", headers, None, self.timeout_s) as response:
                if response.status in _REDIRECT_STATUSES:
                    location = _header(response, b"location")
                    if not location:
                        raise bad_request(
                            f"{param}: the URL answered HTTP {response.status} without a Location",
                            param,
                        )
                    try:
                        current = str(target.httpx_url.join(location))
                    except httpx.InvalidURL:
                        raise bad_request(
                            f"{param}: the URL redirected to an invalid URL", param
                        ) from None
                    continue
                if not 200 <= response.status < 300:
                    raise bad_request(
                        f"{param}: fetching the URL failed: HTTP {response.status}", param
                    )
                return await _read_capped(response, param, max_bytes, spool, spool_threshold)
        raise bad_request(f"{param}: too many redirects (more than {self.max_redirects})", param)

    async def _target(self, url: str, param: str) -> _Target:
        """Parse, resolve and check `url`; return what is needed to request it pinned."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise self._invalid_url(url, param) from None
        scheme = parsed.scheme
        if scheme not in ("http", "https"):
            shown = scheme or "none"
            raise bad_request(
                f"{param}: URL scheme {shown!r} is not allowed; use http or https", param
            )
        host = parsed.raw_host.decode("ascii").lower()
        if not host:
            raise bad_request(f"{param}: the URL has no host", param)
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            literal = _host_literal(host)
        except ValueError:
            raise bad_request(f"{param}: the URL's host {host!r} is not valid", param) from None

        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._lookup(host, port, param)
        if not self.allow_private:
            for ip in addresses:
                reason = refusal_reason(ip)
                if reason:
                    raise bad_request(
                        f"{param}: URL not allowed: {_subject(host, ip, literal)} {reason}", param
                    )
        return _Target(
            url=httpcore.URL(
                scheme=parsed.raw_scheme,
                host=host.encode("ascii"),
                port=port,
                target=parsed.raw_path,
            ),
            host_header=parsed.netloc,
            pin=_Pin(host=host, port=port, addresses=tuple(str(a) for a in addresses[:3])),
            httpx_url=parsed,
        )

    async def _lookup(self, host: str, port: int, param: str) -> list[IPAddress]:
        try:
            answers = await self._resolve(host, port)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in answers]
        except (OSError, ValueError, UnicodeError):
            addresses = []
        if not addresses:
            raise _UnresolvedError(
                "bad_request", f"{param}: could not resolve the URL's host {host!r}", param=param
            )
        return addresses

    def _invalid_url(self, url: str, param: str) -> GatewayError:
        """httpx refuses some spellings outright (`0177.0.0.1`); say why when it is an address."""
        try:
            host = urlsplit(url).hostname or ""
            ip = parse_ipv4_literal(host)
        except ValueError:
            ip = None
        if ip is not None and not self.allow_private:
            reason = refusal_reason(ip)
            if reason:
                return bad_request(
                    f"{param}: URL not allowed: {_subject(host, ip, ip)} {reason}", param
                )
        return bad_request(f"{param}: not a valid URL", param)

    @asynccontextmanager
    async def _stream(
        self,
        target: _Target,
        method: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> AsyncIterator[httpcore.Response]:
        connect = min(_CONNECT_TIMEOUT_S, timeout_s)
        extensions = {
            "timeout": {
                "connect": connect,
                "read": timeout_s,
                "write": timeout_s,
                "pool": timeout_s,
            },
        }
        sent = [(b"Host", target.host_header)]
        sent += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        token = _PIN.set(target.pin)
        try:
            async with self._pool.stream(
                method, target.url, headers=sent, content=body, extensions=extensions
            ) as response:
                yield response
        finally:
            _PIN.reset(token)


async def _read_capped(
    response: httpcore.Response,
    param: str,
    max_bytes: int,
    spool: Spool | None,
    spool_threshold: int,
) -> Blob:
    """Read the body, stopping (413) the moment it passes `max_bytes`, declared or not; a large
    one goes to the spool as it arrives."""
    encoding = _header(response, b"content-encoding")
    if encoding and encoding.lower() != "identity":
        raise bad_request(
            f"{param}: the URL answered with Content-Encoding {encoding!r}; images must be sent "
            "unencoded",
            param,
        )
    declared = _header(response, b"content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(
            f"{param}: the image at the URL is {int(declared):,} bytes, over the limit of "
            f"{max_bytes:,}",
            param,
        )
    sink = Sink(spool, spool_threshold, int(declared) if declared and declared.isdigit() else None)
    async for chunk in response.aiter_stream():
        if len(sink) + len(chunk) > max_bytes:
            raise too_large(
                f"{param}: the image at the URL is over the limit of {max_bytes:,} bytes", param
            )
        sink.write(chunk)
    return sink.finish()


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _subject(host: str, ip: IPAddress, literal: IPAddress | None) -> str:
    if literal is not None and (":" in host or host == str(ip)):
        return f"{host} is"
    if literal is not None:
        return f"{host} is {ip},"
    return f"{host} resolves to {ip},"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    kind = type(exc).__name__
    return f"{kind}: {text}" if text else kind


# --------------------------------------------------------------------------- data: URLs

_WHITESPACE = re.compile(r"\s+")


def decode_data_url(
    url: str,
    *,
    param: str,
    max_bytes: int,
    spool: Spool | None = None,
    spool_threshold: int = 0,
) -> Blob:
    """Decode `data:image/<type>[;params];base64,<data>`; the declared type is not trusted
    (the bytes are sniffed later), but anything that is not a base64 image URL is refused.

    The size is checked from the encoded length before decoding, so an oversized data URL
    costs no allocation beyond what the request body already holds. One that decodes to more
    than `spool_threshold` bytes is decoded piece by piece into `spool`.
    """
    comma = url.find(",")
    fields = [f.strip().lower() for f in url[: max(comma, 0)].split(";")]
    if (
        comma < 0
        or len(fields) < 2
        or not fields[0].startswith("data:image/")
        or fields[-1] != "base64"
    ):
        raise bad_request(
            f"{param}: data URLs must have the form data:image/<type>;base64,<data>", param
        )
    start = comma + 1
    if _WHITESPACE.search(url, start):  # rare: line-wrapped base64 (one copy, without it)
        url, start = _WHITESPACE.sub("", url[start:]), 0
    encoded = len(url) - start
    padding = 2 if url.endswith("==") else 1 if url.endswith("=") else 0
    size = encoded * 3 // 4 - min(padding, encoded)
    if size > max_bytes:
        raise too_large(
            f"{param}: the data URL holds {size:,} bytes, over the limit of {max_bytes:,}", param
        )
    if spool is None or size <= spool_threshold:
        return _b64decode(url[start:] if start else url, param)
    # Pieces of a multiple of 4 characters decode independently; only the last may be padded.
    sink = Sink(spool, spool_threshold, size)
    step = _B64_STEP
    for at in range(start, len(url), step):
        piece = url[at : at + step]
        if at + step < len(url) and "=" in piece:
            raise _bad_base64(param)
        sink.write(_b64decode(piece, param))
    return sink.finish()


_B64_STEP = 256 * 1024  # characters per piece: 192 KiB decoded


def _b64decode(text: str, param: str) -> bytes:
    if len(text) % 4:
        text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_base64(param) from None


def _bad_base64(param: str) -> GatewayError:
    return bad_request(f"{param}: the data URL is not valid base64", param)
