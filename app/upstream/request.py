"""What an adapter asks of an upstream, before any channel is chosen.

An adapter says *what* to call — the protocol action (`images/edits`, `generateContent`), the
upstream model id and the body — and never *where* or *with which key*: the channel kind turns
the action into a URL (OpenAI, Azure deployment path, Gemini, Vertex publisher path) and adds its
own auth. So one OpenAI request serves both `openai` and `azure-openai` channels, one Gemini
request serves `gemini` and `vertex`, and a new operation (generation) is a new action string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.upstream.body import Body


@dataclass(slots=True)
class UpstreamRequest:
    action: str  # "images/edits", "images/generations", "generateContent" ...
    model: str  # the upstream model id this body names
    body: Body
    headers: dict[str, str] = field(default_factory=dict)  # content type, trace id; no secret
    method: str = "POST"
    stream: bool = False  # answered with server-sent events
