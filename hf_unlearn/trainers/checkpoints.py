"""Which checkpoint a run resumes from: the newest *complete* one.

A process killed while the Trainer saves leaves a ``checkpoint-N`` folder without ``trainer_state.json`` (the
Trainer writes it last, after the weights, optimizer, scheduler and RNG states), or with a truncated one;
transformers' ``get_last_checkpoint`` would pick that folder and the resume would fail.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a checkpoint the Trainer finished writing (a parseable ``trainer_state.json``)."""
    state = Path(folder) / TRAINER_STATE_NAME
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``, warning about each newer incomplete one.

    Example:
        >>> path = latest_complete_checkpoint("smollm2-npo")
        >>> trainer.train(resume_from_checkpoint=path)
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = sorted(
        ((int(m.group(1)), child) for child in folder.iterdir() if (m := _CHECKPOINT.match(child.name))),
        reverse=True,
    )
    for _, child in steps:
        if child.is_dir() and is_complete_checkpoint(child):
            return str(child)
        warnings.warn(
            f"skipping {child}: it has no complete {TRAINER_STATE_NAME} (the process was probably stopped while "
            "saving it); resuming from an older checkpoint. Delete the folder once you no longer need it.",
            stacklevel=3,
        )
    return None


def resolve_resume_checkpoint(resume_from_checkpoint: bool | str | None, output_dir: str) -> str | None:
    """What ``Trainer.train(resume_from_checkpoint=...)`` should get: ``True`` becomes the newest complete
    checkpoint; an explicit incomplete one is an error that names the complete alternative."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        path = latest_complete_checkpoint(output_dir)
        if path is None:
            raise ValueError(
                f"resume_from_checkpoint=True but {output_dir} holds no complete checkpoint-N folder; start without "
                "resume_from_checkpoint or point it at a checkpoint folder"
            )
        return path
    if os.path.isdir(resume_from_checkpoint) and not is_complete_checkpoint(resume_from_checkpoint):
        alternative = latest_complete_checkpoint(Path(resume_from_checkpoint).parent)
        raise ValueError(
            f"{resume_from_checkpoint} is an incomplete checkpoint (no readable {TRAINER_STATE_NAME}: the process "
            f"was probably stopped while saving). Resume from {alternative or 'an earlier checkpoint'} instead"
        )
    return str(resume_from_checkpoint)
