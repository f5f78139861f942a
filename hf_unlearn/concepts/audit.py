"""Parametric audit: how much did unlearning change the concept vectors themselves (ConceptVectors §9.2)?

Per audited vector ``v0`` (original model) / ``v1`` (unlearned model), with ``T0``/``T1`` their top-k vocabulary
projections, each made with **its own model's** unembedding:

* ``cosine_similarity``: ``min(1, v0·v1 / (‖v0‖‖v1‖))`` (1.0 for two zero vectors, 0.0 when one is zero);
* ``norm_distance``: ``‖v0 - v1‖₂``;
* ``jaccard_similarity``: ``|T0 ∩ T1| / |T0 ∪ T1|``;
* with a tokenizer and the vector's ``source_text`` (its Wikipedia article), ``W`` = the article's tokens minus
  English stopwords: ``preciser_jaccard_similarity = |T1 ∩ W| / |T0 ∩ W|`` (can exceed 1) and
  ``related_tokens_rate = |T0 ∩ W ∩ T1| / |T0 ∩ W|``; ``None`` when ``T0 ∩ W`` is empty.

Per layer: the relative change of the whole MLP output matrix, ``‖W1 - W0‖_F / ‖W0‖_F``, and how many of its value
vectors changed at all (a Needle run must change exactly the audited ones).

Stopwords are matched on the token text with the word-boundary marker (``▁``, ``Ġ``) removed and lower-cased; the
reference compared raw SentencePiece pieces such as ``▁the`` against ``the``, so it removed almost nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..architectures import (
    check_same_layout,
    decoder_layers,
    effective_unembedding,
    effective_value_vectors,
    final_norm_gain,
    get_adapter,
    mlp_out_module,
    peft_layers,
    underlying_model,
)
from ..atomic_files import atomic_write_json
from .records import ConceptVector, VectorRef, as_concept_vectors

__all__ = ["ENGLISH_STOPWORDS", "AuditTable", "audit_concept_vectors"]

# Common English function words (articles, pronouns, auxiliaries, prepositions, conjunctions, contraction pieces);
# shipped here because NLTK's stopword corpus is a separate download.
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against ain all am an and any are aren aren't as at be because been before being below
    between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down during each
    few for from further had hadn hadn't has hasn hasn't have haven haven't having he he'd he'll he's her here hers
    herself him himself his how i i'd i'll i'm i've if in into is isn isn't it it'd it'll it's its itself just ll m
    ma me mightn mightn't more most mustn mustn't my myself needn needn't no nor not now o of off on once only or
    other our ours ourselves out over own re s same shan shan't she she'd she'll she's should should've shouldn
    shouldn't so some such t than that that'll the their theirs them themselves then there these they they'd they'll
    they're they've this those through to too under until up ve very was wasn wasn't we we'd we'll we're we've were
    weren weren't what when where which while who whom why will with won won't wouldn wouldn't y you you'd you'll
    you're you've your yours yourself yourselves
    """.split()
)

_MARKER = re.compile(r"^[\u2581\u0120\s]+")  # SentencePiece "▁" / byte-level BPE "Ġ" word-start markers


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def _cosine(v0: torch.Tensor, v1: torch.Tensor) -> float:
    if torch.equal(v0, v1):
        return 1.0  # exact, rather than 0.9999999 from rounding
    n0, n1 = v0.double().norm().item(), v1.double().norm().item()
    if n0 == 0.0 or n1 == 0.0:
        return 1.0 if n0 == n1 else 0.0
    return min(1.0, torch.dot(v0.double(), v1.double()).item() / (n0 * n1))


def _top_ids(embedding: torch.Tensor, vector: torch.Tensor, gain: torch.Tensor | None, top_k: int) -> list[int]:
    vector = vector.to(embedding.device)
    if gain is not None:
        vector = vector * gain.detach().to(vector.device, vector.dtype)
    logits = embedding @ vector
    return logits.topk(min(top_k, logits.shape[0])).indices.tolist()


def _article_token_ids(tokenizer: Any, text: str, stopwords: frozenset[str]) -> set[int]:
    """Ids of the tokens of ``text`` that are not stopwords, word-boundary markers or special tokens."""
    ids = set(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    ids -= set(getattr(tokenizer, "all_special_ids", []) or [])
    keep = set()
    for token_id in ids:
        token = tokenizer.convert_ids_to_tokens(token_id)
        word = _MARKER.sub("", token or "").lower()
        if word and word not in stopwords:
            keep.add(token_id)
    return keep


def _token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(i) or f"<{i}>" for i in ids]


# --------------------------------------------------------------------------------------------------------------------
# Result table
# --------------------------------------------------------------------------------------------------------------------

VECTOR_METRICS = (
    "cosine_similarity",
    "norm_distance",
    "jaccard_similarity",
    "preciser_jaccard_similarity",
    "related_tokens_rate",
)


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return math.fsum(values) / len(values) if values else None


@dataclass
class AuditTable:
    """Audit results: one dict per vector (``vectors``) and per layer (``layers``).

    Example:
        >>> table = audit_concept_vectors(original, unlearned, vectors)
        >>> table.to_json("audit.json"); print(table.to_markdown())
    """

    vectors: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    top_k: int = 200
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float | None]:
        """Means over the vectors (``None`` where a metric was never computed) and the largest layer change."""
        out = {f"mean_{name}": _mean(v.get(name) for v in self.vectors) for name in VECTOR_METRICS}
        out["max_relative_change"] = max(
            (layer["relative_change"] for layer in self.layers if layer["relative_change"] is not None), default=None
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "meta": dict(self.meta),
            "summary": self.summary(),
            "vectors": [dict(v) for v in self.vectors],
            "layers": [dict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditTable:
        return cls(
            vectors=[dict(v) for v in data["vectors"]],
            layers=[dict(layer) for layer in data["layers"]],
            top_k=int(data.get("top_k", 200)),
            meta=dict(data.get("meta") or {}),
        )

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the table as strict JSON (no NaN), atomically: a crash never leaves a half-written file."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> AuditTable:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dataframe(self, which: str = "vectors"):
        """A pandas ``DataFrame`` of the ``"vectors"`` or ``"layers"`` rows (pandas is imported only here)."""
        import pandas as pd

        if which not in ("vectors", "layers"):
            raise ValueError(f"which={which!r}: choose 'vectors' or 'layers'")
        return pd.DataFrame(self.vectors if which == "vectors" else self.layers)

    def to_markdown(self, digits: int = 4) -> str:
        """Two Markdown tables (vectors, layers) with the numeric columns."""

        def cell(x: Any) -> str:
            if x is None:
                return "n/a"
            if isinstance(x, float):
                return f"{x:.{digits}f}"
            return str(x).replace("|", "\\|")

        def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
            return lines

        vector_cols = ["concept", "layer", "dim", *VECTOR_METRICS]
        layer_cols = ["layer", "relative_change", "frobenius_distance", "changed_vectors", "total_vectors"]
        return "\n".join(table(self.vectors, vector_cols) + [""] + table(self.layers, layer_cols))

    def __str__(self) -> str:
        s = self.summary()

        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        return (
            f"AuditTable: {len(self.vectors)} vector(s) over {len(self.layers)} layer(s), top-{self.top_k}: "
            f"mean cosine {fmt(s['mean_cosine_similarity'])}, mean L2 {fmt(s['mean_norm_distance'])}, "
            f"mean Jaccard {fmt(s['mean_jaccard_similarity'])}, max layer change {fmt(s['max_relative_change'])}"
        )


# --------------------------------------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def audit_concept_vectors(
    original: nn.Module,
    unlearned: nn.Module,
    vectors: VectorRef | Iterable[VectorRef],
    top_k: int = 200,
    tokenizer: Any = None,
    layers: str | Iterable[int] = "audited",
    apply_final_norm: bool = False,
    show_tokens: int = 10,
    stopwords: Iterable[str] | None = None,
    progress: bool = False,
) -> AuditTable:
    """Compare each concept vector of ``original`` with the same vector in ``unlearned`` (see the module docstring).

    ``vectors``: one ``ConceptVector``, ``(layer, dim)`` or a list. ``layers``: ``"audited"`` (layers holding an
    audited vector), ``"all"`` or explicit indices, for the whole-matrix relative change. With a ``tokenizer``, rows
    also hold the first ``show_tokens`` top tokens of each side, and vectors that carry ``source_text`` get
    ``preciser_jaccard_similarity`` / ``related_tokens_rate``. ``apply_final_norm`` multiplies each vector by its
    model's final-norm gain before projecting (off in ConceptVectors).

    PEFT: ``unlearned`` may be a ``PeftModel``; unmerged LoRA deltas are added to the base weights (DoRA and other
    tuners: ``merge_and_unload()`` first). If ``original`` is the very base model the adapters were injected into,
    its weights are read without the adapters. GPT-2's ``(d_ff, d_model)`` layout is handled by the adapters.

    Example:
        >>> table = audit_concept_vectors(original_model, unlearned_model, vectors, tokenizer=tokenizer)
        >>> print(table.to_markdown())
    """
    from tqdm.auto import tqdm

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    refs = as_concept_vectors(vectors)
    base0, base1 = underlying_model(original), underlying_model(unlearned)
    get_adapter(base0), get_adapter(base1)  # clear error for an unsupported family
    check_same_layout(base0, base1)
    # Same object: adapters were injected into the original in place, so its own view must exclude them.
    same = base0 is base1
    include0 = not same
    n_layers = len(decoder_layers(base1))

    if layers == "audited":
        layer_set = sorted({ref.layer for ref in refs})
    elif layers == "all":
        layer_set = list(range(n_layers))
    elif isinstance(layers, str):
        raise ValueError(f"layers={layers!r}: choose 'audited', 'all' or a list of layer indices")
    else:
        layer_set = sorted({int(x) for x in layers})
    for layer in layer_set + [r.layer for r in refs]:
        if not 0 <= layer < n_layers:
            raise IndexError(f"layer {layer} out of range: the models have {n_layers} decoder layers")

    embedding0 = effective_unembedding(base0, include0)
    embedding1 = effective_unembedding(base1, True)
    gain0 = final_norm_gain(base0) if apply_final_norm else None
    gain1 = final_norm_gain(base1) if apply_final_norm else None
    words = frozenset(w.lower() for w in stopwords) if stopwords is not None else ENGLISH_STOPWORDS
    article_cache: dict[str, set[int]] = {}

    by_layer: dict[int, list[tuple[int, ConceptVector]]] = {}
    for position, ref in enumerate(refs):
        layer = ref.layer
        by_layer.setdefault(layer, []).append((position, ref))

    vector_rows: list[dict[str, Any] | None] = [None] * len(refs)
    dtypes: tuple[str, str] | None = None
    layer_rows: list[dict[str, Any]] = []
    # One layer at a time: peak memory is two float32 copies of one MLP output matrix.
    for layer in tqdm(sorted(set(layer_set) | set(by_layer)), desc="Auditing layers", disable=not progress):
        w0 = effective_value_vectors(base0, layer, include0)
        w1 = effective_value_vectors(base1, layer, True)
        if w0.shape != w1.shape:
            raise ValueError(
                f"layer {layer}: value-vector matrices differ in shape (original {tuple(w0.shape)}, unlearned "
                f"{tuple(w1.shape)}); audit two models of the same architecture"
            )
        if dtypes is None:
            dtypes = (str(mlp_out_module(base0, layer).weight.dtype), str(mlp_out_module(base1, layer).weight.dtype))
            if dtypes[0] != dtypes[1]:
                warnings.warn(
                    f"the original weights are {dtypes[0]} and the unlearned ones {dtypes[1]}: rounding alone "
                    "changes every value vector (cosine < 1, changed_vectors = all); load both models in one dtype"
                )
        w0 = w0.to(w1.device)
        if layer in layer_set:
            diff = w1 - w0
            norm0 = w0.norm().item()
            distance = diff.norm().item()
            layer_rows.append({
                "layer": layer,
                "relative_change": distance / norm0 if norm0 > 0 else (0.0 if distance == 0 else None),
                "frobenius_distance": distance,
                "frobenius_original": norm0,
                "changed_vectors": int((diff != 0).any(dim=0).sum().item()),
                "total_vectors": int(w0.shape[1]),
                "audited_dims": sorted({r.dim for _, r in by_layer.get(layer, [])}),
            })
            del diff
        for position, ref in by_layer.get(layer, []):
            dim = ref.dim
            if not 0 <= dim < w0.shape[1]:
                raise IndexError(f"dim {dim} out of range: layer {layer} has {w0.shape[1]} value vectors")
            v0, v1 = w0[:, dim], w1[:, dim]
            t0 = _top_ids(embedding0, v0, gain0, top_k)
            t1 = _top_ids(embedding1, v1, gain1, top_k)
            s0, s1 = set(t0), set(t1)
            row: dict[str, Any] = {
                "concept": ref.concept or None,
                "id": ref.id,
                "layer": layer,
                "dim": dim,
                "cosine_similarity": _cosine(v0, v1),
                "norm_distance": (v0 - v1).double().norm().item(),
                "jaccard_similarity": len(s0 & s1) / len(s0 | s1),
                "preciser_jaccard_similarity": None,
                "related_tokens_rate": None,
                "norm_original": v0.double().norm().item(),
                "norm_unlearned": v1.double().norm().item(),
            }
            text = ref.source_text
            if tokenizer is not None and text:
                if text not in article_cache:  # several vectors of one concept share the article
                    article_cache[text] = _article_token_ids(tokenizer, text, words)
                article = article_cache[text]
                related0 = [t for t in t0 if t in article]
                related1 = [t for t in t1 if t in article]
                if related0:
                    row["preciser_jaccard_similarity"] = len(related1) / len(related0)
                    row["related_tokens_rate"] = len(set(related0) & s1) / len(related0)
            if tokenizer is not None and show_tokens > 0:
                row["top_tokens_original"] = _token_strings(tokenizer, t0[:show_tokens])
                row["top_tokens_unlearned"] = _token_strings(tokenizer, t1[:show_tokens])
            vector_rows[position] = row
        del w0, w1

    meta = {
        "model_type": getattr(base1.config, "model_type", None),
        "n_layers": n_layers,
        "apply_final_norm": apply_final_norm,
        "same_model_object": same,
        "dtypes": list(dtypes) if dtypes else None,
        "unlearned_has_peft_layers": bool(peft_layers(base1)),
    }
    return AuditTable(vectors=[r for r in vector_rows if r is not None], layers=layer_rows, top_k=top_k, meta=meta)
