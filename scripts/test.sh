#!/usr/bin/env bash
# Install rlmpipe with its test and local-model extras into ./.venv, then run the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k chunking`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install --quiet --upgrade pip
pip install --quiet -e ".[dev,local]"
python -m pytest "$@"
