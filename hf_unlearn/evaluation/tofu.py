"""TOFU's metrics (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024), as open-unlearning
computes them: answer probability, normalised probability, ROUGE-L recall, truth ratio, model utility, forget
quality."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .generation import answer_questions
from .likelihood import answer_log_probs
from .overlap import rouge_l_recall
from .results import MetricValue

TOFU = "TOFU (Maini et al. 2024)"


def _per_token_probability(model, tokenizer, questions, answers, **kwargs) -> torch.Tensor:
    """``exp(mean log p)`` of each answer: the per-token normalised probability TOFU reports."""
    return answer_log_probs(model, tokenizer, questions, answers, **kwargs).mean.exp()


def answer_probability(model, tokenizer, questions, answers, split: str = "", **kwargs) -> MetricValue:
    """TOFU's *Probability*: the mean over items of ``exp(-NLL(y|x) / |y|)``.

    Example:
        >>> answer_probability(model, tokenizer, questions, answers, split="forget").value
    """
    probabilities = _per_token_probability(model, tokenizer, questions, answers, **kwargs)
    return MetricValue("probability", float(probabilities.mean()), split, TOFU, {"per_item": probabilities.tolist()})


def _check_perturbed(questions: Sequence[str], perturbed: Sequence[Sequence[str]]) -> None:
    if len(perturbed) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(perturbed)} lists of perturbed answers")
    for index, answers in enumerate(perturbed):
        if isinstance(answers, str) or not answers:
            raise ValueError(f"perturbed answers of item {index} must be a non-empty list of strings")


def _perturbed_probabilities(model, tokenizer, questions, perturbed, **kwargs) -> list[torch.Tensor]:
    _check_perturbed(questions, perturbed)
    flat_questions = [q for q, answers in zip(questions, perturbed) for _ in answers]
    flat_answers = [a for answers in perturbed for a in answers]
    means = answer_log_probs(model, tokenizer, flat_questions, flat_answers, **kwargs).mean
    return list(means.split([len(answers) for answers in perturbed]))


def normalised_probability(
    model, tokenizer, questions, correct_answers, perturbed_answers, split: str = "", **kwargs
) -> MetricValue:
    """TOFU's probability on real authors and world facts: ``p_c / (p_c + Σ_j p_j)`` over the correct answer and
    its perturbed (wrong) alternatives, per-token normalised probabilities; the mean over items."""
    correct = _per_token_probability(model, tokenizer, questions, correct_answers, **kwargs)
    wrong = [means.exp().sum() for means in _perturbed_probabilities(model, tokenizer, questions, perturbed_answers,
                                                                     **kwargs)]
    values = correct / (correct + torch.stack(wrong))
    return MetricValue("normalised_probability", float(values.mean()), split, TOFU, {"per_item": values.tolist()})


def truth_ratios(model, tokenizer, questions, paraphrased_answers, perturbed_answers, **kwargs) -> torch.Tensor:
    """Per-item truth ratio ``TR = p̄_pert / p̄_para``: ``p̄_para`` the per-token probability of the paraphrased
    answer, ``p̄_pert`` the geometric mean of the perturbed answers' per-token probabilities."""
    paraphrased = answer_log_probs(model, tokenizer, questions, paraphrased_answers, **kwargs).mean
    perturbed = torch.stack([m.mean() for m in _perturbed_probabilities(model, tokenizer, questions,
                                                                         perturbed_answers, **kwargs)])
    return (perturbed - paraphrased).exp()


def truth_ratio_score(ratios: torch.Tensor | Sequence[float], split: str) -> float:
    """TOFU's aggregate: ``mean(min(TR, 1/TR))`` on the forget set (closer to 1 is better: the model cannot tell
    the paraphrased answer from the perturbed ones), ``mean(max(0, 1 - TR))`` elsewhere (higher is better)."""
    ratios = torch.as_tensor(ratios, dtype=torch.float64)
    if split == "forget":
        return float(torch.minimum(ratios, 1 / ratios).mean())
    return float((1 - ratios).clamp(min=0).mean())


def truth_ratio(model, tokenizer, questions, paraphrased_answers, perturbed_answers, split: str, **kwargs):
    """TOFU's truth ratio on ``split`` (aggregated by :func:`truth_ratio_score`; per-item ratios in ``details``)."""
    ratios = truth_ratios(model, tokenizer, questions, paraphrased_answers, perturbed_answers, **kwargs)
    return MetricValue("truth_ratio", truth_ratio_score(ratios, split), split, TOFU, {"per_item": ratios.tolist()})


def rouge_recall(
    model, tokenizer, questions, answers, split: str = "", max_new_tokens: int = 200, batch_size: int = 16,
    **generate_kwargs: Any,
) -> MetricValue:
    """TOFU's ROUGE: the model's greedy answer against the gold answer, ROUGE-L recall, mean over items."""
    generated = answer_questions(model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 **generate_kwargs)
    values = [rouge_l_recall(g, a) for g, a in zip(generated, answers)]
    return MetricValue("rouge_l_recall", math.fsum(values) / len(values), split, TOFU,
                       {"per_item": values, "answers": generated})


def model_utility(values: Sequence[float]) -> float:
    """TOFU's model utility: the harmonic mean of the retain, real-author and world-fact scores (probability,
    ROUGE-L recall, truth ratio of each); 0 when any of them is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("model_utility needs at least one score")
    if any(v < 0 for v in values):
        raise ValueError(f"model_utility takes scores in [0, 1], got {values}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / math.fsum(1 / v for v in values)


def forget_quality(ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> MetricValue:
    """TOFU's forget quality: the p-value of a two-sample Kolmogorov-Smirnov test between the forget-set truth
    ratios of the evaluated model and those of a model trained without the forget set (the retain model). High:
    indistinguishable from never having learned it."""
    from scipy.stats import ks_2samp

    ratios, reference = list(map(float, ratios)), list(map(float, retain_model_ratios))
    if not ratios or not reference:
        raise ValueError("forget_quality needs truth ratios of both models")
    test = ks_2samp(ratios, reference)
    return MetricValue("forget_quality", float(test.pvalue), "forget", TOFU, {"ks_statistic": float(test.statistic)})
