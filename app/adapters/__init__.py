"""Adapters by name, and the per-model adapters built from config.

Adding an upstream protocol is one new module with an adapter class (see `base.Adapter`)
listed in `ADAPTERS` under the name config files use in `models.<name>.adapter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.adapters.dall_e_2 import DallE2Adapter
from app.adapters.gpt_image import GptImageAdapter
from app.adapters.nano_banana import NanoBananaAdapter
from app.upstream.kinds import PROTOCOL

if TYPE_CHECKING:
    from app.adapters.base import Adapter
    from app.core.config import GatewayConfig

ADAPTERS: dict[str, type] = {
    cls.name: cls for cls in (GptImageAdapter, DallE2Adapter, NanoBananaAdapter)
}


def build_adapters(config: GatewayConfig) -> dict[str, Adapter]:
    """One adapter per configured model, keyed by the gateway's model name.

    Raises `ValueError` naming the model for an unknown adapter, or an adapter pointed at a
    channel of the wrong protocol (e.g. nano-banana → an OpenAI channel).
    """
    adapters: dict[str, Adapter] = {}
    for model, mc in config.models.items():
        cls = ADAPTERS.get(mc.adapter)
        if cls is None:
            known = ", ".join(sorted(ADAPTERS))
            raise ValueError(f"models.{model}.adapter: unknown adapter {mc.adapter!r} ({known})")
        for name in mc.channels:
            kind = config.upstreams[name].kind
            if PROTOCOL[kind] != cls.protocol:  # type: ignore[attr-defined]
                raise ValueError(
                    f"models.{model}: adapter {mc.adapter!r} needs a "
                    f"{cls.protocol} channel, but {name!r} is {kind}"  # type: ignore[attr-defined]
                )
        adapters[model] = cls(model, mc)
    return adapters


__all__ = ["ADAPTERS", "DallE2Adapter", "GptImageAdapter", "NanoBananaAdapter", "build_adapters"]
