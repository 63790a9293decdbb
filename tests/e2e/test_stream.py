"""stream=true for gpt-image models: OpenAI's SSE events relayed through the SDK, charged on
`image_edit.completed`, refunded (and an `error` event the SDK raises) when the stream fails."""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import Stack
from tests.support import images


def client(stack: Stack, key: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=stack.url + "/v1/openai", api_key=key["key"], max_retries=0)


def test_stream_partial_and_completed(stack: Stack) -> None:
    key = stack.create_key(credits=1, rpm=1000)
    stream = client(stack, key).images.edit(
        model="gpt-image-1",
        image=("a.png", images.png(), "image/png"),
        prompt="stream it",
        stream=True,
        partial_images=2,
    )
    kinds = []
    for event in stream:
        kinds.append(event.type)
        if event.type == "image_edit.completed":
            images.decode(base64.b64decode(event.b64_json))
    assert kinds.count("image_edit.partial_image") == 2
    assert kinds[-1] == "image_edit.completed"
    assert stack.balance(key["id"]) == pytest.approx(0.90)
    sent = [q for q in stack.sim_requests() if q["protocol"] == "openai"][-1]
    assert sent["fields"]["stream"] == "true" and sent["fields"]["partial_images"] == "2"


def test_stream_failure_is_an_error_event_and_refunded(stack: Stack) -> None:
    key = stack.create_key(credits=1, rpm=1000)
    stack.fault(protocol="openai", kind="safety", where="output", times=1)
    stream = client(stack, key).images.edit(
        model="gpt-image-1",
        image=("a.png", images.png(), "image/png"),
        prompt="stream it",
        stream=True,
        partial_images=1,
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert stack.balance(key["id"]) == 1


def test_nano_banana_ignores_stream(stack: Stack) -> None:
    key = stack.create_key(credits=1, rpm=1000)
    res = client(stack, key).images.edit(
        model="nano-banana",
        image=("a.png", images.png(), "image/png"),
        prompt="x",
        extra_body={"stream": "true"},
    )
    assert res.data[0].url
