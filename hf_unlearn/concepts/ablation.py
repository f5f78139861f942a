"""Reversible ablation of value vectors (noise, zero, mean): weights come back bit-exactly, also on error."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..architectures import value_vectors_view
from .records import VectorRef, as_concept_vectors

ABLATIONS = ("noise", "zero", "mean")


def _locations(vectors: VectorRef | Iterable[VectorRef]) -> list[tuple[int, int]]:
    return [ref.location for ref in as_concept_vectors(vectors)]


@contextmanager
def ablate_concept_vectors(
    model: nn.Module,
    vectors: VectorRef | Iterable[VectorRef],
    mode: str = "noise",
    sigma: float = 0.1,
    seed: int = 0,
) -> Iterator[nn.Module]:
    """Ablate one or several value vectors inside the ``with`` block, then restore them bit-exactly.

    ``mode``: ``"noise"`` adds i.i.d. ``N(0, σ²)`` to every entry (ConceptVectors: σ = 0.1, seeded), ``"zero"``
    zeroes the vector, ``"mean"`` replaces it by the mean value vector of its layer.

    Example:
        >>> with ablate_concept_vectors(model, [(20, 10513), (21, 398)], mode="zero"):
        ...     answers = answer_questions(model, tokenizer, questions)
    """
    if mode not in ABLATIONS:
        raise ValueError(f"mode={mode!r}: choose one of {ABLATIONS}")
    locations = _locations(vectors)
    generator = torch.Generator().manual_seed(seed)
    saved: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer, dim in locations:
                view = value_vectors_view(model, layer)
                if not 0 <= dim < view.shape[1]:
                    raise IndexError(f"dim {dim} out of range: layer {layer} has {view.shape[1]} value vectors")
                saved.append((view, dim, view[:, dim].clone()))
                if mode == "noise":
                    noise = torch.randn(view.shape[0], generator=generator) * sigma
                    view[:, dim] += noise.to(view.device, view.dtype)
                elif mode == "zero":
                    view[:, dim] = 0
                else:
                    view[:, dim] = view.float().mean(dim=1).to(view.dtype)
        yield model
    finally:
        with torch.no_grad():
            # Reverse order: the same column listed twice gets its true original back.
            for view, dim, original in reversed(saved):
                view[:, dim] = original


def ablate_concept_vector(*args, **kwargs):
    """Deprecated name of :func:`ablate_concept_vectors` (it takes a list of vectors)."""
    warnings.warn(
        "ablate_concept_vector is renamed ablate_concept_vectors; the old name will be removed",
        FutureWarning,
        stacklevel=2,
    )
    return ablate_concept_vectors(*args, **kwargs)
