#!/usr/bin/env bash
# Install what the tests need and run them: the README's test command (`make test`) and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: redis-server (the tests start their own, single and
# Cluster) and chromium (the console's browser tests; Playwright never downloads a browser).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing with apt-get: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy app
# Two workers (IMAGEGATE_TEST_WORKERS; 0 runs in this process), each taking whole files, so a
# module's gateway, Redis and browser fixtures start once: most e2e time is waiting on processes.
python3 -m pytest -q -n "${IMAGEGATE_TEST_WORKERS:-2}" --dist loadfile "$@"
