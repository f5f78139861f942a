"""One way to run models in eval mode for a block and leave them exactly as they were."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the block, then give every submodule its own training flag back (also on
    error). Per-module flags, not just ``model.training``: a caller may keep some submodules in another mode on
    purpose, and ``model.train(mode)`` would overwrite them.

    Example:
        >>> with eval_mode(original, unlearned):
        ...     logits = unlearned(**batch).logits
    """
    saved = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, mode in saved:
            module.training = mode
