#!/usr/bin/env bash
# Install rlmpipe with the embedded local model into ./.venv, then run the main job: the contract
# analyzer over examples/contracts/ with the embedded model (no API key, no network at run time).
# Outputs: out/contracts.jsonl, out/clauses.csv, out/report.html (open it in a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install --quiet --quiet --upgrade pip  # -qq: errors only (some pip configurations warn per package)
pip install --quiet --quiet -e ".[local]"
rlmpipe contracts analyze examples/contracts --lm local --out out "$@"
echo "report: $(pwd)/out/report.html"
