"""Causal validation of concept vectors: does ablating the vector(s) change the concept's answers, and only those?

ConceptVectors §5 protocol: greedy answers of the clean model, then of the model with the vector(s) ablated (noise
σ = 0.1 by default), both for the concept's questions and for unrelated questions; each ablated answer is scored
against the clean answer to the same prompt (BLEU, ROUGE-L F1; 1.0 = unchanged). A concept vector should show a large
drop on its own questions and a small one on unrelated questions. Unlike the reference code, every unrelated question
is scored (it scored only the last 10 of 50) and the noise never accumulates across calls (the weights are restored
bit-exactly by :func:`~hf_unlearn.concepts.ablation.ablate_concept_vectors`, also when generation raises).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ..architectures import value_vectors_view
from ..evaluation.generation import answer_questions
from ..evaluation.overlap import text_overlap
from ..evaluation.prompts import DEFAULT_PROMPT_TEMPLATE
from .ablation import ABLATIONS, ablate_concept_vectors
from .records import VectorRef, as_concept_vectors

__all__ = ["AnswerComparison", "ValidationResult", "validate_concept_vectors"]

BLEU_ORDERS = ("standard", "conceptvectors")
#: ConceptVectors' text-completion prompt (used when ``score_completions=True``).
COMPLETION_TEMPLATE = "Please complete the following paragraph: {q}"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass
class AnswerComparison:
    """Clean vs ablated answers to one prompt set, with per-item BLEU / ROUGE-L (ablated scored against clean).

    Example:
        >>> result.target.mean_bleu, result.target.ablated_answers[0]
    """

    prompts: list[str]
    clean_answers: list[str]
    ablated_answers: list[str]
    bleu: list[float]
    rouge_l: list[float]

    @property
    def mean_bleu(self) -> float | None:
        return math.fsum(self.bleu) / len(self.bleu) if self.bleu else None

    @property
    def mean_rouge_l(self) -> float | None:
        return math.fsum(self.rouge_l) / len(self.rouge_l) if self.rouge_l else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bleu": self.mean_bleu,
            "rouge_l": self.mean_rouge_l,
            "n": len(self.prompts),
            "prompts": list(self.prompts),
            "clean_answers": list(self.clean_answers),
            "ablated_answers": list(self.ablated_answers),
            "bleu_per_item": [float(x) for x in self.bleu],
            "rouge_l_per_item": [float(x) for x in self.rouge_l],
        }


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_concept_vectors`.

    ``target`` holds the concept's questions, ``unrelated`` the unrelated questions (``None`` when there were none),
    ``completion`` the text-completion prompts (only with ``score_completions=True``).

    Example:
        >>> result = validate_concept_vectors(model, tokenizer, vector)
        >>> json.dumps(result.to_dict()); print(result)
    """

    concepts: list[str | None]
    locations: list[tuple[int, int]]
    mode: str
    sigma: float
    seed: int
    bleu_order: str
    target: AnswerComparison
    unrelated: AnswerComparison | None = None
    completion: AnswerComparison | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def target_bleu(self) -> float | None:
        return self.target.mean_bleu

    @property
    def target_rouge_l(self) -> float | None:
        return self.target.mean_rouge_l

    @property
    def unrelated_bleu(self) -> float | None:
        return self.unrelated.mean_bleu if self.unrelated is not None else None

    @property
    def unrelated_rouge_l(self) -> float | None:
        return self.unrelated.mean_rouge_l if self.unrelated is not None else None

    def summary(self) -> dict[str, float | None]:
        """The headline numbers: mean BLEU / ROUGE-L per prompt set (``None`` for a set that was not scored)."""
        out = {
            "target_bleu": self.target_bleu,
            "target_rouge_l": self.target_rouge_l,
            "unrelated_bleu": self.unrelated_bleu,
            "unrelated_rouge_l": self.unrelated_rouge_l,
        }
        if self.completion is not None:
            out["completion_bleu"] = self.completion.mean_bleu
            out["completion_rouge_l"] = self.completion.mean_rouge_l
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (plain floats, lists; ``None`` for unscored sets)."""
        return {
            "concepts": list(self.concepts),
            "locations": [[layer, dim] for layer, dim in self.locations],
            "mode": self.mode,
            "sigma": float(self.sigma),
            "seed": int(self.seed),
            "bleu_order": self.bleu_order,
            **self.summary(),
            "target": self.target.to_dict(),
            "unrelated": self.unrelated.to_dict() if self.unrelated is not None else None,
            "completion": self.completion.to_dict() if self.completion is not None else None,
            "settings": dict(self.settings),
        }

    def __str__(self) -> str:
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        where = ", ".join(f"L{layer}/{dim}" for layer, dim in self.locations)
        names = ", ".join(sorted({c for c in self.concepts if c})) or "?"
        return (
            f"Validation of {names} [{where}] ({self.mode}{f', sigma={self.sigma}' if self.mode == 'noise' else ''}): "
            f"target BLEU {fmt(self.target_bleu)} ROUGE-L {fmt(self.target_rouge_l)} (n={len(self.target.prompts)}); "
            f"unrelated BLEU {fmt(self.unrelated_bleu)} ROUGE-L {fmt(self.unrelated_rouge_l)} "
            f"(n={len(self.unrelated.prompts) if self.unrelated else 0})"
        )


def _compare(prompts: list[str], clean: list[str], ablated: list[str], bleu_order: str) -> AnswerComparison:
    # "standard": the ablated answer is the hypothesis, the clean answer the reference (see behaviour.py).
    if bleu_order == "standard":
        scores = text_overlap(ablated, clean)
    else:
        scores = text_overlap(clean, ablated)
    return AnswerComparison(prompts, clean, ablated, scores["bleu_per_item"], scores["rouge_l_per_item"])


def validate_concept_vectors(
    model: nn.Module,
    tokenizer: Any,
    vectors: VectorRef | Iterable[VectorRef],
    questions: Sequence[str] | None = None,
    unrelated_questions: Sequence[str] | None = None,
    mode: str = "noise",
    sigma: float = 0.1,
    seed: int = 0,
    max_new_tokens: int = 100,
    batch_size: int = 16,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    system_prompt: str | None = None,
    score_completions: bool = False,
    bleu_order: str = "standard",
    progress: bool | None = None,
    **generate_kwargs: Any,
) -> ValidationResult:
    """Answer the concept's and unrelated questions with the clean model, then with the vector(s) ablated, and score
    the ablated answers against the clean ones.

    ``vectors``: one ``ConceptVector``, one ``(layer, dim)`` pair or a list of them, ablated together as one set.
    ``questions`` / ``unrelated_questions`` default to the ``ConceptVector`` fields (the de-duplicated union over the
    listed vectors; unrelated questions that are also target questions are dropped). ``mode``/``sigma``/``seed`` go to
    :func:`~hf_unlearn.concepts.ablation.ablate_concept_vectors`. ``bleu_order="standard"`` scores BLEU(hypothesis =
    ablated answer, reference = clean answer); ``"conceptvectors"`` swaps them as the reference code does. ROUGE-L F1
    is symmetric. ``score_completions`` also scores the vectors' text completions (``First_half`` prompts).

    Example:
        >>> result = validate_concept_vectors(model, tokenizer, vectors[0], mode="noise", sigma=0.1)
        >>> result.target_bleu, result.unrelated_bleu
    """
    if bleu_order not in BLEU_ORDERS:
        raise ValueError(f"bleu_order={bleu_order!r}: choose one of {BLEU_ORDERS}")
    if mode not in ABLATIONS:
        raise ValueError(f"mode={mode!r}: choose one of {ABLATIONS}")
    records = as_concept_vectors(vectors)
    locations = [r.location for r in records]
    # Check the locations before the (slow) clean pass rather than after it, inside the ablation.
    for layer, dim in locations:
        n_vectors = value_vectors_view(model, layer).shape[1]
        if not 0 <= dim < n_vectors:
            raise IndexError(f"dim {dim} out of range: layer {layer} has {n_vectors} value vectors")

    if questions is None:
        questions = _unique(q for r in records for q in r.questions)
    questions = list(questions)
    if not questions:
        raise ValueError(
            "no questions to validate with: pass questions=... or ConceptVector records that have .questions"
        )
    if unrelated_questions is None:
        target = set(questions)
        unrelated_questions = _unique(q for r in records for q in r.unrelated_questions if q not in target)
    unrelated_questions = list(unrelated_questions)
    completions = _unique(c["First_half"] for r in records for c in r.text_completions) if score_completions else []
    if score_completions and not completions:
        raise ValueError("score_completions=True but none of the vectors has text_completions")

    # One prompt list per set, answered in one call each so that batching (and thus numerics) is identical for the
    # clean and the ablated pass.
    sets: list[tuple[str, list[str], str]] = [("target", questions, prompt_template)]
    if unrelated_questions:
        sets.append(("unrelated", unrelated_questions, prompt_template))
    if completions:
        sets.append(("completion", completions, COMPLETION_TEMPLATE))

    # One bar over the clean and ablated passes of every set (generation on a real model takes minutes).
    bar = tqdm(total=2 * len(sets), desc="Validating concept vectors", disable=progress is False)

    def run(state: str) -> dict[str, list[str]]:
        out = {}
        for name, prompts, template in sets:
            bar.set_postfix_str(f"{state} {name}")
            out[name] = answer_questions(
                model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                prompt_template=template, chat=chat, system_prompt=system_prompt, progress=bool(progress),
                **generate_kwargs,
            )
            bar.update(1)
        return out

    try:
        clean = run("clean")
        with ablate_concept_vectors(model, locations, mode=mode, sigma=sigma, seed=seed):
            ablated = run("ablated")
    finally:
        bar.close()

    comparisons = {name: _compare(prompts, clean[name], ablated[name], bleu_order) for name, prompts, _ in sets}
    return ValidationResult(
        concepts=[r.concept or None for r in records],
        locations=locations,
        mode=mode,
        sigma=float(sigma),
        seed=int(seed),
        bleu_order=bleu_order,
        target=comparisons["target"],
        unrelated=comparisons.get("unrelated"),
        completion=comparisons.get("completion"),
        settings={
            "max_new_tokens": max_new_tokens,
            "prompt_template": prompt_template,
            "chat": chat,
            "system_prompt": system_prompt,
        },
    )


def validate_concept_vector(*args, **kwargs):
    """Deprecated name of :func:`validate_concept_vectors` (it takes a list of vectors)."""
    warnings.warn(
        "validate_concept_vector is renamed validate_concept_vectors; the old name will be removed",
        FutureWarning,
        stacklevel=2,
    )
    return validate_concept_vectors(*args, **kwargs)
