#!/usr/bin/env bash
# Install what the tests need and run them: the README's test command (`make test`) and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing it with apt-get (the tests start their own)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy app
python3 -m pytest -q "$@"
