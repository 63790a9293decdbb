"""Adapter registry: protocol adapters by name, and the per-model adapters built from config.

Adding an upstream protocol is one new module with an adapter class (see `base.Adapter`)
registered in `ADAPTERS` under the name config files use in `models.<name>.adapter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.adapters.dall_e_2 import DallE2Adapter
from app.adapters.gpt_image import GptImageAdapter
from app.adapters.nano_banana import NanoBananaAdapter

if TYPE_CHECKING:
    from app.adapters.base import Adapter
    from app.core.config import GatewayConfig
    from app.upstream.client import UpstreamClient

ADAPTERS: dict[str, type] = {
    cls.name: cls for cls in (GptImageAdapter, DallE2Adapter, NanoBananaAdapter)
}


def register(cls: type) -> type:
    """Register an adapter class under its `name` (usable as a decorator by new modules)."""
    ADAPTERS[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def build_adapters(config: GatewayConfig, clients: dict[str, UpstreamClient]) -> dict[str, Adapter]:
    """One adapter per configured model, keyed by the gateway's model name.

    Raises `ValueError` naming the model for an unknown adapter, a missing upstream client, or
    an adapter pointed at an upstream of the wrong kind (e.g. nano-banana → an OpenAI upstream).
    """
    adapters: dict[str, Adapter] = {}
    for model, mc in config.models.items():
        cls = ADAPTERS.get(mc.adapter)
        if cls is None:
            known = ", ".join(sorted(ADAPTERS))
            raise ValueError(f"models.{model}.adapter: unknown adapter {mc.adapter!r} ({known})")
        client = clients.get(mc.upstream)
        if client is None:
            raise ValueError(f"models.{model}.upstream: no client for upstream {mc.upstream!r}")
        kind = getattr(cls, "upstream_kind", None)
        if kind is not None and client.kind != kind:
            raise ValueError(
                f"models.{model}: adapter {mc.adapter!r} needs a {kind} upstream, "
                f"but {mc.upstream!r} is {client.kind}"
            )
        adapters[model] = cls(model, mc, client)
    return adapters


__all__ = ["ADAPTERS", "DallE2Adapter", "GptImageAdapter", "NanoBananaAdapter", "build_adapters"]
