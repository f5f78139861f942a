"""A concept's characteristic tokens: its own words against a background, smoothed by a tokenizer-level prior
(the input of the vocab scorer)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import torch


def _token_counts(tokenizer, texts: Sequence[str]) -> Counter:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    counts: Counter = Counter()
    for text in texts:
        if text:
            counts.update(t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t not in special)
    return counts


def token_prior(tokenizer) -> torch.Tensor:
    """A tokenizer-level unigram distribution over the vocabulary, standing in for "general text" frequencies.

    * Unigram models (SentencePiece/T5 style) store each piece's log-probability: used directly.
    * BPE models: a token made by merge ``i`` was (roughly) the ``i``-th most frequent pair when the tokenizer was
      trained, so a Zipf law over the merge rank, ``p ∝ 1 / (rank + 10)``; base characters get rank 100 (common
      ones like "," or "e" should not look characteristic, rare bytes hardly ever appear in a concept's text).
    * Anything else (WordLevel, slow tokenizers): uniform, i.e. no prior knowledge.

    Example:
        >>> prior = token_prior(tok)
        >>> prior[tok.convert_tokens_to_ids("Ġthe")] > prior[tok.convert_tokens_to_ids("ĠPotter")]
    """
    size = len(tokenizer)
    uniform = torch.full((size,), 1.0 / size, dtype=torch.float64)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return uniform
    try:
        spec = json.loads(backend.to_str())["model"]
    except (ValueError, KeyError, AttributeError):
        return uniform
    if spec.get("type") == "Unigram" and spec.get("vocab"):
        # Pieces are listed in id order as [piece, log-prob].
        logp = torch.full((size,), -30.0, dtype=torch.float64)
        scores = torch.tensor([float(score) for _, score in spec["vocab"]], dtype=torch.float64)[:size]
        logp[: len(scores)] = scores
        prior = logp.exp()
        return prior / prior.sum()
    if spec.get("type") == "BPE" and spec.get("merges"):
        vocab = spec.get("vocab") or {}
        rank = torch.full((size,), 100.0, dtype=torch.float64)
        for index, merge in enumerate(spec["merges"]):
            left, right = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
            token_id = vocab.get(left + right)
            if token_id is not None and token_id < size and rank[token_id] == 100.0:
                rank[token_id] = float(index)
        prior = 1.0 / (rank + 10.0)
        return prior / prior.sum()
    return uniform


def characteristic_tokens(
    tokenizer,
    concept_texts: Sequence[str],
    background_texts: Sequence[str] | None = None,
    num_tokens: int = 50,
    background_weight: float = 0.5,
    smoothing: float = 0.5,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens that characterise a concept's text against a background: ``(token_ids, weights)``, best first.

    Weight of token ``w`` = ``n_c(w) · log(p_c(w) / p_b(w))`` (its contribution to ``KL(p_c || p_b)``, a tf-idf
    style score: frequent in the concept, rare in the background), keeping the ``num_tokens`` best with a positive
    weight. ``p_c`` is the add-``smoothing`` unigram distribution of ``concept_texts``. ``p_b`` mixes the
    background texts' unigram distribution (share ``background_weight``) with ``prior`` (default
    :func:`token_prior`), which stands for general text when the background sample is small or absent, so " the"
    or " of" do not look characteristic just because the background sample is short.

    Example:
        >>> ids, weights = characteristic_tokens(tok, ["Harry Potter", "Who wrote Harry Potter? J.K. Rowling"])
        >>> tok.convert_ids_to_tokens(ids[:5])
    """
    concept = _token_counts(tokenizer, concept_texts)
    if not concept:
        raise ValueError("the concept has no text to derive characteristic tokens from")
    background = _token_counts(tokenizer, background_texts or [])
    vocab = len(tokenizer)
    prior = token_prior(tokenizer) if prior is None else prior.double()
    ids = torch.tensor(sorted(concept), dtype=torch.long)
    n_c = torch.tensor([concept[i] for i in ids.tolist()], dtype=torch.float64)
    p_c = (n_c + smoothing) / (n_c.sum() + smoothing * vocab)
    p_b = prior[ids]
    if background:
        n_b = torch.tensor([background.get(i, 0) for i in ids.tolist()], dtype=torch.float64)
        total_b = float(sum(background.values()))
        p_b = background_weight * (n_b + smoothing) / (total_b + smoothing * vocab) + (1 - background_weight) * p_b
    weights = n_c * torch.log(p_c / p_b)
    keep = weights > 0
    ids, weights = ids[keep], weights[keep]
    order = weights.argsort(descending=True)[:num_tokens]
    return ids[order], weights[order].float()
