"""`python -m bench.peers setup litellm` (what `make bench-peers` runs) and `... status`."""

from __future__ import annotations

import argparse
import sys

from bench.peers import PEERS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    p.add_argument("action", choices=["setup", "status"])
    p.add_argument("peers", nargs="*", default=sorted(PEERS), help=f"from {sorted(PEERS)}")
    args = p.parse_args(argv)
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        p.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
    rc = 0
    for name in args.peers:
        spec = PEERS[name]
        if args.action == "status":
            print(f"{name}: {'installed' if spec.installed() else 'not installed'} ({spec.venv})")
        else:
            rc = rc or spec.setup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
