"""Verbatim memorisation of answers: exact memorisation and extraction strength (open-unlearning's definitions),
and MUSE's verbatim and knowledge memorisation (ROUGE of generations)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .generation import answer_questions
from .likelihood import answer_log_probs
from .overlap import rouge_l
from .results import MetricValue

MUSE = "MUSE (Shi et al. 2024)"


def exact_memorization(model, tokenizer, questions, answers, split: str = "", **kwargs: Any) -> MetricValue:
    """Teacher-forced share of answer tokens that are the model's top-1 prediction, mean over items (Tirumala et
    al. 2022; open-unlearning's EM).

    Example:
        >>> exact_memorization(model, tokenizer, questions, answers, split="forget").value
    """
    scores = answer_log_probs(model, tokenizer, questions, answers, **kwargs)
    values = [float(m.float().mean()) for m in scores.greedy_match]
    return MetricValue("exact_memorization", math.fsum(values) / len(values), split,
                       "exact memorization (Tirumala et al. 2022)", {"per_item": values})


def extraction_strength(model, tokenizer, questions, answers, split: str = "", **kwargs: Any) -> MetricValue:
    """``ES = 1 - k / |y|`` with ``k`` the shortest prefix of the answer from which the teacher-forced top-1
    predictions reproduce the whole rest of it (Carlini et al. 2021; open-unlearning's ES); mean over items."""
    scores = answer_log_probs(model, tokenizer, questions, answers, **kwargs)
    values = []
    for matches in scores.greedy_match:
        wrong = (~matches).nonzero()
        prefix = int(wrong[-1]) + 1 if wrong.numel() else 0
        values.append(1 - prefix / matches.numel())
    return MetricValue("extraction_strength", math.fsum(values) / len(values), split,
                       "extraction strength (Carlini et al. 2021)", {"per_item": values})


def verbatim_memorization(
    model, tokenizer, prefixes: Sequence[str], continuations: Sequence[str], max_new_tokens: int = 128,
    split: str = "forget", **generate_kwargs: Any,
) -> MetricValue:
    """MUSE's VerbMem: the model continues each prefix greedily; ROUGE-L F1 against the true continuation."""
    if len(prefixes) != len(continuations):
        raise ValueError(f"{len(prefixes)} prefixes but {len(continuations)} continuations")
    generated = answer_questions(model, tokenizer, prefixes, max_new_tokens=max_new_tokens, prompt_template="{q}",
                                 **generate_kwargs)
    values = [rouge_l(g, c) for g, c in zip(generated, continuations)]
    return MetricValue("verbatim_memorization", math.fsum(values) / len(values), split, MUSE,
                       {"per_item": values, "generated": generated})


def knowledge_memorization(
    model, tokenizer, questions: Sequence[str], answers: Sequence[str], few_shot: Sequence[tuple[str, str]] = (),
    max_new_tokens: int = 32, split: str = "forget", **generate_kwargs: Any,
) -> MetricValue:
    """MUSE's KnowMem: greedy answers (after optional few-shot question/answer examples), cut at a blank line or the
    next "Question", ROUGE-L F1 against the gold answer."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in few_shot)
    prompts = [f"{prefix}Question: {q}\nAnswer:" for q in questions]
    generated = answer_questions(model, tokenizer, prompts, max_new_tokens=max_new_tokens, prompt_template="{q}",
                                 **generate_kwargs)
    cut = [g.split("\n\n")[0].split("Question")[0].strip() for g in generated]
    values = [rouge_l(g, a) for g, a in zip(cut, answers)]
    return MetricValue("knowledge_memorization", math.fsum(values) / len(values), split, MUSE,
                       {"per_item": values, "generated": cut})
