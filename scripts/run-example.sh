#!/usr/bin/env bash
# Install rlmpipe into ./.venv, then run the main job: the contract analyzer over examples/contracts/
# with the shipped clause finder alone (no language model, no API key, no network at run time;
# seconds). Outputs: out/contracts.jsonl, out/clauses.csv, out/report.html (open it in a browser).
# Extra arguments go to `rlmpipe contracts analyze` (e.g. `--lm openai/gpt-4o-mini` for the cascade).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install --quiet --quiet --upgrade pip  # -qq: errors only (some pip configurations warn per package)
pip install --quiet --quiet -e .
rlmpipe contracts analyze examples/contracts --out out "$@"
echo "report: $(pwd)/out/report.html"
