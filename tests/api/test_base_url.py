"""The result-link base URL: the configured public URL, else what the request reached,
remembered per scheme/Host/root path without ever mixing two hosts up."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from starlette.requests import Request

from app.api import deps


def _request(host: str | None, scheme: str = "http", root_path: str = "") -> Request:
    headers = [(b"host", host.encode())] if host is not None else []
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": scheme,
        "server": ("10.0.0.1", 8080),
        "path": "/v1/images/edits",
        "root_path": root_path,
        "query_string": b"",
        "headers": headers,
    }
    return Request(scope)


def _gw(public: str | None = None) -> Any:
    return SimpleNamespace(settings=SimpleNamespace(public_base_url=public))


def test_each_host_scheme_and_root_path_gets_its_own_url() -> None:
    gw = _gw()
    cases = [
        (_request("a.example:8000"), "http://a.example:8000"),
        (_request("b.example"), "http://b.example"),
        (_request("a.example:8000", scheme="https"), "https://a.example:8000"),
        (_request("a.example:8000", root_path="/gw"), "http://a.example:8000/gw"),
        (_request(None), "http://10.0.0.1:8080"),
    ]
    for _ in range(2):  # the second round is answered from the map
        for req, want in cases:
            assert deps.base_url(req, gw) == want
            assert want == str(req.base_url).rstrip("/")


def test_many_hosts_keep_the_map_small() -> None:
    gw = _gw()
    for i in range(1000):
        assert deps.base_url(_request(f"h{i}.example"), gw) == f"http://h{i}.example"
    assert len(deps._BASE_URLS) <= 256


def test_public_base_url_wins() -> None:
    assert deps.base_url(_request("a.example"), _gw("https://img.example/")) == (
        "https://img.example"
    )
