"""Azure OpenAI and Vertex AI channels against the simulator's cloud forms: requests exactly as
those services expect them (path, api-version, auth header, role), service-account tokens
minted, cached and refreshed before they expire."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.adapters.gpt_image import GptImageAdapter
from app.adapters.nano_banana import NanoBananaAdapter
from app.core.config import RoutingConfig
from app.upstream.channels import Channel
from tests.adapters import Bound, make_req, model_config, upstream_config
from tests.support.net import ThreadedServer


@pytest.fixture(autouse=True)
def _reset(fresh_sim: ThreadedServer) -> None:
    """Every test starts with a quiet simulator (tests/adapters/conftest.py)."""


def recorded(sim: ThreadedServer) -> list[dict[str, Any]]:
    return list(httpx.get(sim.url + "/_sim/requests").json())


def on(kind: str, base_url: str, adapter: Any, **kw: Any) -> Bound:
    config = upstream_config(kind, base_url=base_url, retries=0, **kw)
    return Bound(adapter, Channel(kind, config, RoutingConfig()), RoutingConfig(max_attempts=1))


def banana() -> NanoBananaAdapter:
    return NanoBananaAdapter(
        "nano-banana", model_config("nano-banana", "gemini-2.5-flash-image", "vertex")
    )


async def test_azure_deployment_edit(sim: ThreadedServer) -> None:
    gpt = GptImageAdapter("gpt-image-1", model_config("gpt-image", "gpt-image-1"))
    a = on("azure-openai", sim.url, gpt, deployments={"gpt-image-1": "img-edit-prod"})
    out = await a.edit(gpt.check_fields(make_req("gpt-image-1")), "t")
    assert len(out.images) == 1 and out.channel == "azure-openai"
    (req,) = recorded(sim)
    assert req["protocol"] == "azure-openai" and req["status"] == 200
    assert req["path"] == "/openai/deployments/img-edit-prod/images/edits"
    assert req["query"] == {"api-version": "2025-04-01-preview"}
    headers = {k.lower() for k in req["headers"]}
    assert "api-key" in headers and "authorization" not in headers


async def test_azure_deployment_generation(sim: ThreadedServer) -> None:
    """A generation is the same OpenAI request with another action: the deployment path's
    `images/generations`, JSON, `api-key` auth."""
    gpt = GptImageAdapter("gpt-image-1", model_config("gpt-image", "gpt-image-1"))
    a = on("azure-openai", sim.url, gpt, deployments={"gpt-image-1": "img-prod"})
    req = make_req("gpt-image-1", images=[], operation="generate", body_kind="json")
    out = await a.edit(gpt.check_fields(req), "t")
    assert len(out.images) == 1
    (rec,) = recorded(sim)
    assert rec["path"] == "/openai/deployments/img-prod/images/generations"
    assert rec["query"] == {"api-version": "2025-04-01-preview"} and rec["status"] == 200
    assert rec["json"] == {"model": "gpt-image-1", "prompt": "make it blue"}


async def test_azure_refuses_a_bearer_key(sim: ThreadedServer) -> None:
    """The simulator is strict: the OpenAI form of auth on an Azure path is a 401."""
    r = httpx.post(
        sim.url + "/openai/deployments/d/images/edits?api-version=2025-04-01-preview",
        headers={"authorization": "Bearer sk-x"},
        files={"image": ("a.png", b"x", "image/png")},
        data={"prompt": "p"},
    )
    assert r.status_code == 401


async def test_vertex_express_key(sim: ThreadedServer) -> None:
    a = on("vertex", sim.url + "/v1", banana())
    out = await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert len(out.images) == 1
    (req,) = recorded(sim)
    assert req["path"] == "/v1/publishers/google/models/gemini-2.5-flash-image:generateContent"
    assert req["status"] == 200


async def test_vertex_requires_role(sim: ThreadedServer) -> None:
    body = {"contents": [{"parts": [{"text": "draw"}]}]}
    r = httpx.post(
        sim.url + "/v1/publishers/google/models/gemini-2.5-flash-image:generateContent",
        headers={"x-goog-api-key": "k"},
        json=body,
    )
    assert r.status_code == 400 and "valid role" in r.text


def service_account(tmp: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "proj-1",
        "private_key_id": "kid-1",
        "private_key": pem,
        "client_email": "imagegate@proj-1.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path = tmp / "sa.json"
    path.write_text(json.dumps(info))
    return path


async def test_vertex_service_account_token_minted_cached_and_refreshed(
    sim: ThreadedServer, tmp_path: Path
) -> None:
    sa = service_account(tmp_path, sim.url + "/token")
    # a token valid for 301 s is "about to expire" 1 s after minting (refreshed 300 s early)
    httpx.post(sim.url + "/_sim/config", json={"token_lifetime_s": 301}).raise_for_status()
    a = on(
        "vertex", sim.url + "/v1", banana(), api_key=None,
        project="proj-1", location="us-central1", credentials_file=str(sa),
    )  # fmt: skip
    assert a.channel.keys[0].prefix == "sa:imagegate"
    req = a.check_fields(make_req("nano-banana"))
    await a.edit(req, "t1")
    await a.edit(req, "t2")  # cached: no second token
    time.sleep(1.1)
    await a.edit(req, "t3")  # within 300 s of expiry: refreshed first
    calls = [(r["protocol"], r["path"], r["status"]) for r in recorded(sim)]
    edit_path = (
        "/v1/projects/proj-1/locations/us-central1/publishers/google/models/"
        "gemini-2.5-flash-image:generateContent"
    )
    assert calls == [
        ("oauth2", "/token", 200),
        ("vertex", edit_path, 200),
        ("vertex", edit_path, 200),
        ("oauth2", "/token", 200),
        ("vertex", edit_path, 200),
    ]


def test_vertex_project_path_refuses_an_api_key(sim: ThreadedServer) -> None:
    """As Google does: a key on the project/location form is a 401 (the simulator is strict)."""
    r = httpx.post(
        sim.url + "/v1/projects/p/locations/l/publishers/google/models/"
        "gemini-2.5-flash-image:generateContent",
        headers={"x-goog-api-key": "k"},
        json={"contents": [{"role": "user", "parts": [{"text": "draw"}]}]},
    )
    assert r.status_code == 401 and "API keys are not supported" in r.text
