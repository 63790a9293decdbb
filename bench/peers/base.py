"""What the harness needs from a peer gateway: install it, start it, and say how to call it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Managed, Supervisor

PEERS_DIR = Path(__file__).resolve().parent.parent / ".work" / "peers"


@dataclass
class Peer:
    """A running peer: where to send the edit, with which bearer token."""

    name: str  # "litellm"
    label: str  # "LiteLLM 1.108.7", for the table header
    port: int
    token: str
    managed: Managed

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def edits_url(self) -> str:
        return f"{self.base}/v1/images/edits"

    def tree(self) -> list[int]:
        return self.managed.tree()


@dataclass(frozen=True)
class PeerSpec:
    name: str
    title: str  # "LiteLLM"
    venv: Path
    installed: Callable[[], bool]
    setup: Callable[[], int]  # exit status
    start: Callable[[Supervisor, Path, str, str], Peer]  # (sup, run_dir, mock_base, model)
