"""Membership inference against the forget set: can an attacker tell forget examples from never-seen ones?

Every score is oriented so that higher means *less* member-like; forget examples are labelled 0 and holdout
examples 1, and the attack's AUC is ``roc_auc_score(labels, scores)`` (scikit-learn): about 1 means the forget set
still looks memorised, about 0.5 that it is indistinguishable from the holdout. Log-probabilities are float32.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch

from .likelihood import answer_log_probs
from .results import MetricValue

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")
SOURCES = {
    "loss": "LOSS (Yeom et al. 2018)",
    "zlib": "zlib (Carlini et al. 2021)",
    "min_k": "Min-K% (Shi et al. 2024)",
    "min_k_plus_plus": "Min-K%++ (Zhang et al. 2024)",
    "reference": "reference-model ratio (Carlini et al. 2021)",
}


def _pairs(data: Sequence[Any], name: str) -> tuple[list[str], list[str]]:
    """Prompts and answers from plain texts (scored whole) or prompt/completion (or question/answer) records."""
    if isinstance(data, str) or not len(data):
        raise ValueError(f"{name} must be a non-empty list of texts or of prompt/completion records")
    prompts, answers = [], []
    for index, item in enumerate(data):
        if isinstance(item, str):
            prompts.append("")
            answers.append(item)
        elif isinstance(item, dict):
            prompt = item.get("prompt", item.get("question"))
            answer = item.get("completion", item.get("answer"))
            if not isinstance(prompt, str) or not isinstance(answer, str):
                raise ValueError(f"{name}[{index}] needs string 'prompt' and 'completion' (or 'question'/'answer')")
            prompts.append(prompt)
            answers.append(answer)
        else:
            raise ValueError(f"{name}[{index}] is a {type(item).__name__}: give texts or prompt/completion dicts")
    return prompts, answers


def _lowest_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    count = max(1, int(round(values.numel() * fraction)))
    return values.sort().values[:count].mean()


def mia_scores(
    model,
    tokenizer,
    data: Sequence[Any],
    attack: str = "min_k",
    k: float = 0.4,
    reference_model=None,
    prompt_template: str = "{q}",
    **kwargs: Any,
) -> torch.Tensor:
    """Per-example scores of one attack (higher = less member-like):

    * ``loss``: mean token NLL;
    * ``zlib``: mean token NLL divided by the zlib-compressed length of the text in bytes;
    * ``min_k``: minus the mean of the lowest ``k`` fraction of the token log-probs;
    * ``min_k_plus_plus``: the same on Min-K%++'s normalised scores ``(log p(y_t) - μ_t) / σ_t``;
    * ``reference``: ``NLL_θ - NLL_ref`` with ``reference_model`` (e.g. a model never trained on the data).

    ``data``: texts (scored from their start) or prompt/completion records (the completion scored given the prompt;
    prompts are used as they are unless ``prompt_template`` says otherwise).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is unknown; choose one of {list(ATTACKS)}")
    if not 0 < k <= 1:
        raise ValueError(f"k is the fraction of tokens, in (0, 1]; got {k}")
    prompts, answers = _pairs(data, "data")
    scores = answer_log_probs(model, tokenizer, prompts, answers, prompt_template=prompt_template,
                              min_k_plus_plus=attack == "min_k_plus_plus", **kwargs)
    if attack == "loss":
        return -scores.mean
    if attack == "zlib":
        sizes = torch.tensor([len(zlib.compress((p + a).encode("utf-8"))) for p, a in zip(prompts, answers)])
        return -scores.mean / sizes
    if attack == "min_k":
        return torch.stack([-_lowest_mean(t, k) for t in scores.token_log_probs])
    if attack == "min_k_plus_plus":
        return torch.stack([-_lowest_mean(z, k) for z in scores.min_k_plus_plus])
    if reference_model is None:
        raise ValueError("attack='reference' needs reference_model=... (a model that never saw the data)")
    reference = answer_log_probs(reference_model, tokenizer, prompts, answers, prompt_template=prompt_template,
                                 **kwargs)
    return reference.mean - scores.mean


def attack_auc(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """AUC of separating members (label 0) from non-members (label 1) by the scores, via scikit-learn."""
    from sklearn.metrics import roc_auc_score

    labels = [0] * len(member_scores) + [1] * len(nonmember_scores)
    values = torch.cat([torch.as_tensor(member_scores), torch.as_tensor(nonmember_scores)]).double()
    if not torch.isfinite(values).all():
        raise ValueError("the attack produced non-finite scores; check the data for empty texts")
    return float(roc_auc_score(labels, values.numpy()))


def membership_inference(
    model,
    tokenizer,
    forget: Sequence[Any],
    holdout: Sequence[Any],
    attacks: Sequence[str] = ("loss", "zlib", "min_k", "min_k_plus_plus"),
    k: float = 0.4,
    reference_model=None,
    **kwargs: Any,
) -> dict[str, MetricValue]:
    """The AUC of each attack at telling the forget set from the holdout set (never trained on).

    Example:
        >>> membership_inference(model, tokenizer, forget_texts, holdout_texts)["min_k"].value
    """
    out = {}
    for attack in attacks:
        members = mia_scores(model, tokenizer, forget, attack, k, reference_model, **kwargs)
        nonmembers = mia_scores(model, tokenizer, holdout, attack, k, reference_model, **kwargs)
        out[attack] = MetricValue(f"mia_{attack}_auc", attack_auc(members, nonmembers), "forget", SOURCES[attack])
    return out


def privleak(auc: float, retain_model_auc: float | None = None) -> MetricValue:
    """MUSE's privacy leakage (Shi et al. 2024): ``((1 - A) - (1 - A_ret)) / (1 - A_ret) · 100`` with ``A`` the
    Min-K% AUC of the evaluated model and ``A_ret`` that of the retain model (default 0.5, its ideal). 0 is ideal,
    strongly negative means the forget set still leaks (under-unlearning), positive means over-unlearning."""
    reference = 0.5 if retain_model_auc is None else float(retain_model_auc)
    if reference >= 1:
        raise ValueError(f"the retain model's AUC must be below 1 (got {reference})")
    value = ((1 - auc) - (1 - reference)) / (1 - reference) * 100
    return MetricValue("privleak", value, "forget", "MUSE (Shi et al. 2024)",
                       {"auc": auc, "retain_model_auc": reference})
