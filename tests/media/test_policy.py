"""The address policy and URL refusals, checked without a single connection."""

from __future__ import annotations

import ipaddress
from typing import Any, NoReturn

import httpcore
import pytest

from app.core.errors import GatewayError
from app.media.fetch import GuardedFetcher, PinnedBackend, parse_ipv4_literal, refusal_reason


class NoConnectBackend(httpcore.AsyncNetworkBackend):
    """Fails the test if the fetcher ever tries to open a connection."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kw: Any) -> NoReturn:
        self.attempts.append((host, port))
        raise AssertionError(f"refusal tests must not connect (tried {host}:{port})")

    async def connect_unix_socket(self, *args: Any, **kw: Any) -> NoReturn:
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("no sleeping")


async def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"IP literals must not be resolved ({host})")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("100.100.100.200", "metadata"),
        ("192.0.0.192", "metadata"),
        ("168.63.129.16", "metadata"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "reserved"),  # TEST-NET-1
        ("198.18.0.1", "reserved"),  # benchmarking
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("2001:db8::1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("::8.8.8.8", "deprecated"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b:1::1", "NAT64"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "metadata"),  # 6to4 of 169.254.169.254
    ],
)
def test_refused_addresses(address: str, why: str) -> None:
    reason = refusal_reason(ipaddress.ip_address(address))
    assert reason is not None and why in reason, (address, reason)


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("1.2.3.4.", "1.2.3.4"),
        ("example.com", None),
        ("public.test", None),
        ("1e100.net", None),
        ("0x7f.example", None),
    ],
)
def test_ipv4_spellings(host: str, expected: str | None) -> None:
    parsed = parse_ipv4_literal(host)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.0.0.1", "1.2.3.08", "4294967296", "1..2", "0x1.0xg.1"]
)
def test_invalid_numeric_hosts(host: str) -> None:
    with pytest.raises(ValueError):
        parse_ipv4_literal(host)


REFUSALS = [
    ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://x/", "scheme 'ftp'"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher'"),
    ("//127.0.0.1/", "scheme"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
    ("http://2130706433/", "2130706433 is 127.0.0.1, a loopback address"),
    ("http://0x7f000001/", "0x7f000001 is 127.0.0.1, a loopback address"),
    ("http://0x7f.0.0.1/", "0x7f.0.0.1 is 127.0.0.1, a loopback address"),
    ("http://0177.0.0.1/", "0177.0.0.1 is 127.0.0.1, a loopback address"),
    ("http://127.1/", "loopback"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("http://0.0.0.0:8000/", "unspecified"),
    ("http://1.2.3.4.5/", "not valid"),
    ("http:///nohost", "no host"),
    ("https://user:pw@10.0.0.1/", "private"),
]


@pytest.mark.parametrize(("url", "fragment"), REFUSALS)
async def test_refusal_table(url: str, fragment: str) -> None:
    backend = NoConnectBackend()
    fetcher = GuardedFetcher(allow_private=False, resolver=no_dns, network_backend=backend)
    try:
        for call in (
            fetcher.check_url(url, param="image"),
            fetcher.fetch(url, param="image", max_bytes=10_000),
        ):
            with pytest.raises(GatewayError) as info:
                await call
            err = info.value
            assert (err.code, err.status, err.param) == ("bad_request", 400, "image")
            assert err.message.startswith("image: "), err.message
            assert fragment in err.message, err.message
        with pytest.raises(GatewayError) as info:
            await fetcher.post(url, body=b"{}", headers={}, timeout_s=1)
        assert info.value.param == "callback_url"
    finally:
        await fetcher.aclose()
    assert backend.attempts == []


async def test_loopback_message_is_exact() -> None:
    fetcher = GuardedFetcher(
        allow_private=False, resolver=no_dns, network_backend=NoConnectBackend()
    )
    with pytest.raises(GatewayError) as info:
        await fetcher.check_url("http://127.0.0.1/x.png", param="image")
    assert info.value.message == "image: URL not allowed: 127.0.0.1 is a loopback address"
    await fetcher.aclose()


async def test_names_resolving_to_private_addresses_are_refused() -> None:
    answers = {
        "intranet.test": ["10.1.2.3"],
        "mixed.test": ["93.184.216.34", "127.0.0.1"],  # any bad answer refuses the URL
        "metadata.test": ["169.254.169.254"],
        "v6.test": ["::1"],
    }

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    fetcher = GuardedFetcher(
        allow_private=False, resolver=resolver, network_backend=NoConnectBackend()
    )
    try:
        for host, addr in [
            ("intranet.test", "10.1.2.3"),
            ("mixed.test", "127.0.0.1"),
            ("metadata.test", "169.254.169.254"),
            ("v6.test", "::1"),
        ]:
            with pytest.raises(GatewayError) as info:
                await fetcher.check_url(f"https://{host}/a.png", param="image[2]")
            assert f"{host} resolves to {addr}" in info.value.message
            assert info.value.param == "image[2]"
    finally:
        await fetcher.aclose()


async def test_unresolvable_host() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    fetcher = GuardedFetcher(
        allow_private=False, resolver=resolver, network_backend=NoConnectBackend()
    )
    with pytest.raises(GatewayError) as info:
        await fetcher.check_url("http://nowhere.test/", param="image")
    assert "could not resolve" in info.value.message
    await fetcher.aclose()


async def test_allow_private_skips_the_policy_only() -> None:
    fetcher = GuardedFetcher(
        allow_private=True, resolver=no_dns, network_backend=NoConnectBackend()
    )
    await fetcher.check_url("http://127.0.0.1:9/", param="image")  # allowed, nothing sent
    with pytest.raises(GatewayError):
        await fetcher.check_url("file:///etc/passwd", param="image")  # scheme still refused
    await fetcher.aclose()


async def test_pinned_backend_refuses_connections_without_a_pin() -> None:
    backend = PinnedBackend(NoConnectBackend())
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("127.0.0.1", 80)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_unix_socket("/var/run/docker.sock")
