#!/usr/bin/env bash
# The project's test command (README, CI): set up the environment, lint, run the tests offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check .
python -m pytest -q "$@"
