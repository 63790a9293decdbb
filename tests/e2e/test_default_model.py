"""A config without `default_model` (and without gpt-image-1.5) starts; a request that names no
model is then a 400 naming `model`, and no credit moves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from app.core.config import Settings, load_config
from tests.e2e.conftest import Stack, start_stack
from tests.support import images

SHIPPED = Path(__file__).parents[2] / "config" / "gateway.yaml"


@pytest.fixture(scope="module")
def bare_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    raw = yaml.safe_load(SHIPPED.read_text())
    raw.pop("default_model", None)
    raw["models"].pop("gpt-image-1.5")
    path = tmp_path_factory.mktemp("conf") / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(Settings(), path)  # must not raise
    assert config.default_model is None
    s = start_stack(config_file=path)
    try:
        yield s
    finally:
        s.gateway.stop()
        s.sim.stop()


def test_request_without_model_is_400_naming_model(bare_stack: Stack) -> None:
    key = bare_stack.create_key(credits=5)
    bare_stack.clear_sim()
    r = httpx.post(
        f"{bare_stack.url}/v1/images/edits",
        headers={"authorization": f"Bearer {key['key']}"},
        data={"prompt": "x"},
        files={"image": ("a.png", images.png(64, 64), "image/png")},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("bad_request", "model")
    assert bare_stack.balance(key["id"]) == 5
    assert bare_stack.sim_requests() == []
