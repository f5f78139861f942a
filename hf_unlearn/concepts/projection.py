"""Value vectors and their projection onto the vocabulary (the "logit lens" of an MLP value vector)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..architectures import decoder_layers, final_norm_gain, unembedding, value_vectors_view


def value_vector(model: nn.Module, layer: int, dim: int) -> torch.Tensor:
    """A copy of value vector ``dim`` of layer ``layer`` (shape ``(d_model,)``), whatever the weight layout.

    Example:
        >>> v = value_vector(model, layer=20, dim=10513)
        >>> token_ids, scores = project_to_vocab(model, v)
    """
    view = value_vectors_view(model, layer)
    if not 0 <= dim < view.shape[1]:
        raise IndexError(f"dim {dim} out of range: layer {layer} has {view.shape[1]} value vectors")
    return view[:, dim].detach().clone()


def _gained(model: nn.Module, vectors: torch.Tensor, apply_final_norm: bool) -> torch.Tensor:
    if not apply_final_norm:
        return vectors
    gain = final_norm_gain(model)
    if gain is None:
        return vectors
    gain = gain.detach().to(vectors.dtype)
    return vectors * (gain if vectors.dim() == 1 else gain[:, None])


@torch.no_grad()
def project_to_vocab(
    model: nn.Module, vector: torch.Tensor, top_k: int = 200, apply_final_norm: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` tokens of ``E · v`` (``E`` the unembedding): ``(token_ids, scores)``, highest first.

    ``apply_final_norm`` multiplies ``v`` by the final norm's gain first (off by default, as in ConceptVectors).
    """
    embedding = unembedding(model).detach()
    vector = _gained(model, vector.to(embedding.device, embedding.dtype), apply_final_norm)
    logits = embedding.float() @ vector.float()
    scores, ids = logits.topk(min(top_k, logits.shape[0]))
    return ids, scores


@dataclass
class VocabChunk:
    """Projection results for value vectors ``dims`` of ``layer``."""

    layer: int
    dims: torch.Tensor
    top_ids: torch.Tensor  # (len(dims), top_k)
    top_scores: torch.Tensor  # (len(dims), top_k)
    extra: torch.Tensor | None = None  # what score_fn returned, one value per dim


@torch.no_grad()
def scan_value_vectors(
    model: nn.Module,
    layers: Sequence[int] | None = None,
    top_k: int = 200,
    chunk_size: int = 512,
    apply_final_norm: bool = False,
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> Iterator[VocabChunk]:
    """Project every value vector of ``layers`` onto the vocabulary, ``chunk_size`` vectors at a time.

    Peak extra memory is one ``(vocab, chunk_size)`` float32 logits block. ``score_fn`` receives that block (one
    column per value vector) and returns one score per column, e.g. how much the vector promotes a token set.

    Example:
        >>> for chunk in scan_value_vectors(model, layers=[20], top_k=20):
        ...     print(chunk.layer, chunk.dims[:3], chunk.top_ids[:3])
    """
    from tqdm.auto import tqdm

    embedding = unembedding(model).detach().float()
    layers = list(range(len(decoder_layers(model)))) if layers is None else list(layers)
    for layer in tqdm(layers, desc="Projecting value vectors", disable=not progress):
        view = value_vectors_view(model, layer).detach()
        for start in range(0, view.shape[1], chunk_size):
            block = _gained(model, view[:, start : start + chunk_size].float(), apply_final_norm)
            # (chunk, vocab) with the vocabulary contiguous: top-k along contiguous rows is ~3x faster than down
            # the columns of (vocab, chunk), which made the scan slower than its matmul.
            logits = block.to(embedding.device).T @ embedding.T
            scores, ids = logits.topk(min(top_k, logits.shape[1]), dim=-1)
            extra = score_fn(logits.T) if score_fn is not None else None
            dims = torch.arange(start, start + block.shape[1])
            yield VocabChunk(layer, dims, ids, scores, extra)
            del logits


def layer_list(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    count = len(decoder_layers(model))
    if layers is None:
        return list(range(count))
    out = sorted({int(layer) % count if -count <= int(layer) < 0 else int(layer) for layer in layers})
    bad = [layer for layer in out if not 0 <= layer < count]
    if bad:
        raise IndexError(f"layers {bad} out of range: the model has {count} decoder layers")
    return out


@torch.no_grad()
def vocab_scores(
    model: nn.Module,
    token_ids: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    method: str = "moments",
    chunk_size: int = 512,
    apply_final_norm: bool = False,
) -> dict[int, torch.Tensor]:
    """How strongly each value vector's vocabulary projection promotes ``token_ids``: ``{layer: (d_ff,) scores}``.

    Score of ``v`` = weighted mean over the tokens of the *standardised* logit ``(E_t · v - mean(E v)) / std(E v)``
    (mean and std over the whole vocabulary), so a large-norm vector that promotes everything does not win. It is
    the number of standard deviations by which the concept's tokens stand out in the vector's projection.

    ``method="moments"`` (default) computes the vocabulary mean and variance exactly from the first two moments of
    the unembedding (``mean = ē·v``, ``var = vᵀ Cov(E) v``): ``O(d_model²)`` memory, a fraction of a second for a
    135M model. ``method="scan"`` computes the same numbers from the full projection with
    :func:`scan_value_vectors` (memory: one ``(vocab, chunk_size)`` block; ~2 s per layer for SmolLM2-135M on two
    CPU cores), useful as a cross-check.

    Example:
        >>> ids, w = characteristic_tokens(tok, concept_texts, background_texts)
        >>> scores = vocab_scores(model, ids, w, layers=range(10, 20))  # {layer: tensor(d_ff)}
    """
    embedding = unembedding(model).detach().float()
    device = embedding.device
    token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)
    weights = torch.ones(len(token_ids)) if token_weights is None else torch.as_tensor(token_weights).float()
    weights = (weights / weights.sum()).to(device)
    layers = layer_list(model, layers)
    gain = final_norm_gain(model) if apply_final_norm else None
    out: dict[int, torch.Tensor] = {}
    if method == "scan":
        def score_fn(logits: torch.Tensor) -> torch.Tensor:
            # torch.std would be the unbiased estimate; the population one matches the moments method exactly.
            mean = logits.mean(0)
            std = (logits - mean).pow(2).mean(0).sqrt().clamp_min(1e-12)
            return weights @ ((logits[token_ids] - mean) / std)

        parts: dict[int, list[torch.Tensor]] = {}
        for chunk in scan_value_vectors(
            model, layers, top_k=1, chunk_size=chunk_size, apply_final_norm=apply_final_norm, score_fn=score_fn
        ):
            parts.setdefault(chunk.layer, []).append(chunk.extra.cpu())
        return {layer: torch.cat(p) for layer, p in parts.items()}
    if method != "moments":
        raise ValueError(f"method={method!r}: choose 'moments' or 'scan'")
    e_mean = embedding.mean(0)
    covariance = embedding.T @ embedding / embedding.shape[0] - torch.outer(e_mean, e_mean)
    rows = embedding[token_ids]  # (M, d_model)
    for layer in layers:
        values = value_vectors_view(model, layer).detach().float().to(device)  # (d_model, d_ff)
        if gain is not None:
            values = values * gain.detach().float().to(device)[:, None]
        mean = e_mean @ values
        std = (values * (covariance @ values)).sum(0).clamp_min(1e-24).sqrt()
        out[layer] = (weights @ ((rows @ values - mean) / std)).cpu()
    return out
