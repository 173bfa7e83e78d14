#!/usr/bin/env bash
# Install rlmpipe with its test and local-model extras into ./.venv, then run the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k chunking`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install --quiet --quiet --upgrade pip  # -qq: errors only (some pip configurations warn per package)
pip install --quiet --quiet -e ".[dev,local]"
source scripts/_llama_portable.sh
# Headless Chromium checks the HTML reports; Debian's package, when we may install it.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the browser tests will be skipped" >&2
fi
python -m pytest "$@"
