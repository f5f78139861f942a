"""The measured tables in bench/README.md: each script replaces the block between its own markers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_unlearn.atomic_files import atomic_write_text  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"


def update_table(name: str, table: str, heading: str = "") -> None:
    """Write ``table`` between ``<!-- {name}-table:start -->`` and ``<!-- {name}-table:end -->``; when the markers
    are not there yet, append ``heading`` and the marked block at the end."""
    start, end = f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"
    block = f"{start}\n{table}\n{end}"
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + (heading + "\n\n" if heading else "") + block + "\n"
    atomic_write_text(README, text)
