"""How many located vectors to ablate: the largest set that hurts the concept and spares the background.

A concept is spread over many value vectors in a small model, and the right set size differs by concept (measured
in the README's "Locating concepts" section). The rule uses only data the locator has seen (its questions and its
background), so the held-out numbers that judge the set stay held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..evaluation.likelihood import answer_log_probs
from ..evaluation.prompts import DEFAULT_PROMPT_TEMPLATE
from .ablation import ablate_concept_vectors

if TYPE_CHECKING:
    from .locate import ConceptScores

#: Mean answer log-prob drop (nats per token) on the concept's questions below which a ratio is noise.
MIN_DROP = 0.1
#: Required concept drop over background drop.
TARGET_RATIO = 5.0
#: Largest background drop accepted: a few background questions do not represent everything else, so a set that
#: already costs them this much costs unrelated knowledge more.
MAX_SIDE_DROP = 0.05
#: Set sizes tried by default.
SIZES = (10, 20, 40, 80)


@dataclass(frozen=True)
class SetSizeTrial:
    """The drops (clean minus ablated mean answer log-prob per token) when the top ``n`` vectors are zeroed."""

    n: int
    concept_drop: float
    background_drop: float

    @property
    def ratio(self) -> float:
        """Concept drop over background drop; background drops below 0.01 (or gains) count as 0.01."""
        return self.concept_drop / max(self.background_drop, 0.01)


def pick_set_size(trials: Sequence[SetSizeTrial]) -> SetSizeTrial:
    """The largest set whose concept drop is at least ``MIN_DROP`` and ``TARGET_RATIO`` times its background drop,
    with a background drop of at most ``MAX_SIDE_DROP``; if none qualifies, the best ratio.

    Example:
        >>> pick_set_size([SetSizeTrial(10, 0.3, 0.0), SetSizeTrial(40, 0.9, 0.02), SetSizeTrial(80, 1.2, 0.09)]).n
        40
    """
    if not trials:
        raise ValueError("no set size was tried: pass at least one SetSizeTrial")
    good = [t for t in trials if t.concept_drop >= MIN_DROP and t.ratio >= TARGET_RATIO
            and t.background_drop <= MAX_SIDE_DROP]
    return max(good, key=lambda t: t.n) if good else max(trials, key=lambda t: t.ratio)


def choose_set_size(
    model: nn.Module,
    tokenizer,
    scores: ConceptScores,
    questions: Sequence[str],
    answers: Sequence[str],
    background_questions: Sequence[str],
    background_answers: Sequence[str],
    sizes: Sequence[int] = SIZES,
    by: str | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
) -> tuple[int, list[SetSizeTrial]]:
    """Zero the top ``n`` located vectors for each ``n`` of ``sizes``, measure the drop of the concept's and the
    background's gold answers, and pick ``n`` with :func:`pick_set_size`. Returns ``(n, trials)``.

    Example:
        >>> n, trials = choose_set_size(model, tok, scores, qs, ans, background_qs, background_ans)
        >>> vectors = scores.to_records(n)
    """
    if not questions or not background_questions:
        raise ValueError("choosing the set size needs the concept's and the background's questions with answers")
    if len(answers) != len(questions) or len(background_answers) != len(background_questions):
        raise ValueError("pair every question (concept and background) with its gold answer")
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive set sizes (got {list(sizes)})")
    prompts = [*questions, *background_questions]
    golds = [*answers, *background_answers]
    split = len(questions)

    def means() -> tuple[float, float]:
        # One batch for every pair: the clean and ablated passes share the same numerics.
        per_item = answer_log_probs(model, tokenizer, prompts, golds, batch_size=len(prompts),
                                    prompt_template=prompt_template, chat=chat, progress=False).mean
        return float(per_item[:split].mean()), float(per_item[split:].mean())

    with torch.no_grad():
        clean = means()
        trials = []
        for n in sizes:
            with ablate_concept_vectors(model, scores.top(n, by), mode="zero"):
                ablated = means()
            trials.append(SetSizeTrial(n, clean[0] - ablated[0], clean[1] - ablated[1]))
    return pick_set_size(trials).n, trials
