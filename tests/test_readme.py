"""Every Python snippet of README.md runs as written, top to bottom in one session, offline.

The embedded SmolLM2 is replaced by a tiny random Llama of the same depth (30 layers), so the snippets' layer
numbers hold and the run takes seconds; everything else is the snippets' own code."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from tiny_models import build_tokenizer, tiny_llama

import hf_unlearn.smollm2

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(python_blocks()) >= 5


def test_every_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    tokenizer = build_tokenizer()

    def load_smollm2(dtype=None):
        return tiny_llama(tokenizer, layers=30, hidden=32).eval(), tokenizer

    monkeypatch.setattr(hf_unlearn.smollm2, "load_smollm2", load_smollm2)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for index, block in enumerate(python_blocks()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
            except Exception as error:  # noqa: BLE001 - the message names the block that broke
                pytest.fail(f"README python block {index + 1} failed: {type(error).__name__}: {error}\n{block}")
