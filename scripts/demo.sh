#!/usr/bin/env bash
# Sets up .venv and runs the main job: unlearn a fact from a small model built on the spot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python examples/unlearn_fact.py "$@"
