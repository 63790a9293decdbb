"""Peers: other gateways measured in the same run, against the same mock, for the ratio rows.

A peer lives in a virtualenv of its own under `bench/.work/peers/` (gitignored), installed by
`make bench-peers` (`python -m bench.peers setup litellm`). The harness starts a peer only when
its venv is there; otherwise its column says "skipped: not installed".
"""

from __future__ import annotations

from bench.peers import litellm
from bench.peers.base import Peer, PeerSpec

PEERS: dict[str, PeerSpec] = {"litellm": litellm.SPEC}

__all__ = ["PEERS", "Peer", "PeerSpec"]
