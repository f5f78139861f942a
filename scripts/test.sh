#!/usr/bin/env bash
# Sets up .venv and runs the whole offline test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check hf_unlearn tests examples bench
.venv/bin/python -m pytest -q "$@"
