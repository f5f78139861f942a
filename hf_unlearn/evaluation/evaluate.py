"""``evaluate_unlearning``: the field's metrics on forget / retain / holdout data in one call, and a training
callback that runs it every N steps and warns when the retained knowledge falls."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..atomic_files import atomic_write_text
from .likelihood import mean_answer_log_prob
from .memorization import exact_memorization, extraction_strength
from .mia import membership_inference, mia_scores, privleak
from .prompts import DEFAULT_PROMPT_TEMPLATE
from .results import MetricValue
from .tofu import answer_probability, forget_quality, model_utility, rouge_recall, truth_ratio, truth_ratios

METRICS = (
    "log_prob", "probability", "rouge", "truth_ratio", "exact_memorization", "extraction_strength", "mia",
    "privleak", "forget_quality", "model_utility",
)
DEFAULT_METRICS = ("log_prob", "probability", "rouge", "truth_ratio", "exact_memorization", "extraction_strength",
                   "mia", "privleak", "forget_quality", "model_utility")


@dataclass
class QASet:
    """Questions and answers of one split, with TOFU's paraphrased and perturbed answers when present."""

    questions: list[str]
    answers: list[str]
    paraphrased: list[str] | None = None
    perturbed: list[list[str]] | None = None

    @classmethod
    def from_data(cls, data: Any, name: str) -> QASet:
        """From a ``datasets.Dataset`` or a list of dicts with ``question``/``answer`` (or ``prompt``/
        ``completion``), optionally ``paraphrased_answer`` and ``perturbed_answer`` (a list)."""
        rows = data.to_list() if hasattr(data, "to_list") else list(data)
        if not rows:
            raise ValueError(f"{name} is empty: give at least one question and answer")
        questions, answers, paraphrased, perturbed = [], [], [], []
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"{name}[{index}] is a {type(row).__name__}; give dicts with 'question' and 'answer'")
            question = row.get("question", row.get("prompt"))
            answer = row.get("answer", row.get("completion"))
            if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
                raise ValueError(
                    f"{name}[{index}] needs a string 'question' (or 'prompt') and a non-empty string 'answer' (or "
                    f"'completion'); got {sorted(row)}"
                )
            questions.append(question)
            answers.append(answer)
            paraphrased.append(row.get("paraphrased_answer"))
            perturbed.append(row.get("perturbed_answer"))
        has_truth_ratio = all(isinstance(p, str) for p in paraphrased) and all(
            isinstance(p, list) and p for p in perturbed
        )
        return cls(questions, answers, paraphrased if has_truth_ratio else None,
                   perturbed if has_truth_ratio else None)

    def records(self) -> list[dict[str, str]]:
        return [{"prompt": q, "completion": a} for q, a in zip(self.questions, self.answers)]


@dataclass
class UnlearningEvaluation:
    """The metrics of :func:`evaluate_unlearning`: rows of ``(metric, split, value)``."""

    values: list[MetricValue]
    meta: dict[str, Any] = field(default_factory=dict)

    def get(self, metric: str, split: str = "") -> float | None:
        for value in self.values:
            if value.name == metric and value.split == split:
                return float(value.value)
        return None

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{split: {metric: value}}`` (metrics of no split under ``"all"``)."""
        out: dict[str, dict[str, float]] = {}
        for value in self.values:
            out.setdefault(value.split or "all", {})[value.name] = float(value.value)
        return out

    def to_json(self, path: str | Path) -> None:
        rows = [{"metric": v.name, "split": v.split, "value": float(v.value), "source": v.source} for v in self.values]
        atomic_write_text(Path(path), json.dumps({"meta": self.meta, "metrics": rows}, indent=2))

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{"metric": v.name, "split": v.split, "value": float(v.value)} for v in self.values])

    def to_markdown(self, other: UnlearningEvaluation | None = None, names: tuple[str, str] = ("before", "after")):
        """A table of the metrics; with ``other``, this evaluation and ``other`` side by side."""
        if other is None:
            lines = ["| metric | split | value |", "|---|---|---|"]
            lines += [f"| {v.name} | {v.split or '-'} | {float(v.value):.4g} |" for v in self.values]
            return "\n".join(lines)
        lines = [f"| metric | split | {names[0]} | {names[1]} |", "|---|---|---|---|"]
        for v in self.values:
            after = other.get(v.name, v.split)
            lines.append(f"| {v.name} | {v.split or '-'} | {float(v.value):.4g} | "
                         f"{'-' if after is None else f'{after:.4g}'} |")
        return "\n".join(lines)

    def eval_results(self, dataset_name: str, dataset_type: str = "custom") -> list:
        """``huggingface_hub.EvalResult`` entries of every value, for a model card's ``model-index``."""
        return [v.to_eval_result(dataset_name, dataset_type) for v in self.values]


def evaluate_unlearning(
    model,
    tokenizer,
    forget: Any,
    retain: Any = None,
    holdout: Any = None,
    retain_model=None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> UnlearningEvaluation:
    """Evaluate an unlearned model on its forget set and what it should keep.

    ``forget``, ``retain`` and ``holdout`` (facts of the same kind never trained on, for membership inference) are
    question/answer data (:class:`QASet`); TOFU's ``paraphrased_answer`` / ``perturbed_answer`` columns enable the
    truth ratio. ``retain_model`` (a model trained without the forget set) enables TOFU's forget quality, the
    reference-model attack and privleak's retain AUC. Metrics whose inputs are missing are skipped. Every value is a
    :class:`MetricValue` (plain number, source, ``EvalResult``).

    Example:
        >>> before = evaluate_unlearning(model, tokenizer, forget, retain, holdout)
        >>> print(before.to_markdown(evaluate_unlearning(unlearned, tokenizer, forget, retain, holdout)))
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    splits = {"forget": QASet.from_data(forget, "forget")}
    if retain is not None:
        splits["retain"] = QASet.from_data(retain, "retain")
    if holdout is not None:
        splits["holdout"] = QASet.from_data(holdout, "holdout")
    if retain_model is not None:
        _check_tokenizer(model, retain_model, tokenizer)
    scoring = dict(prompt_template=prompt_template, chat=chat, batch_size=batch_size, progress=False)
    plan = []
    for name, data in splits.items():
        for metric in ("log_prob", "probability", "exact_memorization", "extraction_strength", "rouge"):
            if metric in metrics:
                plan.append((metric, name, data))
        if "truth_ratio" in metrics and data.paraphrased is not None:
            plan.append(("truth_ratio", name, data))
    if "mia" in metrics and "holdout" in splits:
        plan.append(("mia", "forget", None))
    if "privleak" in metrics and "holdout" in splits:
        plan.append(("privleak", "forget", None))
    if "forget_quality" in metrics and retain_model is not None and splits["forget"].paraphrased is not None:
        plan.append(("forget_quality", "forget", None))

    values: list[MetricValue] = []
    for metric, split, data in tqdm(plan, desc="Evaluating unlearning", disable=not progress):
        values.extend(_run(metric, split, data, model, tokenizer, splits, retain_model, scoring, max_new_tokens,
                           prompt_template, chat, batch_size))
    if "model_utility" in metrics and "retain" in splits:
        parts = [v for v in values if v.split == "retain" and v.name in ("probability", "rouge_l_recall",
                                                                           "truth_ratio")]
        if parts:
            values.append(MetricValue("model_utility", model_utility([p.value for p in parts]), "retain",
                                      "TOFU (Maini et al. 2024)", {"from": [p.name for p in parts]}))
    meta = {"splits": {k: len(v.questions) for k, v in splits.items()}, "prompt_template": prompt_template,
            "chat": chat, "max_new_tokens": max_new_tokens}
    return UnlearningEvaluation(values, meta)


def _run(metric, split, data, model, tokenizer, splits, retain_model, scoring, max_new_tokens, prompt_template,
         chat, batch_size) -> list[MetricValue]:
    if metric == "log_prob":
        return [mean_answer_log_prob(model, tokenizer, data.questions, data.answers, split, **scoring)]
    if metric == "probability":
        return [answer_probability(model, tokenizer, data.questions, data.answers, split, **scoring)]
    if metric == "exact_memorization":
        return [exact_memorization(model, tokenizer, data.questions, data.answers, split, **scoring)]
    if metric == "extraction_strength":
        return [extraction_strength(model, tokenizer, data.questions, data.answers, split, **scoring)]
    if metric == "rouge":
        return [rouge_recall(model, tokenizer, data.questions, data.answers, split, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, prompt_template=prompt_template, chat=chat, progress=False)]
    if metric == "truth_ratio":
        return [truth_ratio(model, tokenizer, data.questions, data.paraphrased, data.perturbed, split, **scoring)]
    mia_data = {name: _formatted(splits[name], prompt_template, chat, tokenizer) for name in ("forget", "holdout")}
    if metric == "mia":
        attacks = ("loss", "zlib", "min_k", "min_k_plus_plus") + (("reference",) if retain_model is not None else ())
        return list(membership_inference(model, tokenizer, mia_data["forget"], mia_data["holdout"], attacks,
                                         reference_model=retain_model, batch_size=batch_size, progress=False).values())
    if metric == "privleak":
        auc = _min_k_auc(model, tokenizer, mia_data, batch_size)
        reference = _min_k_auc(retain_model, tokenizer, mia_data, batch_size) if retain_model is not None else None
        if reference is None:
            warnings.warn("privleak without a retain model uses 0.5 as its AUC (the ideal); pass retain_model=... "
                          "for MUSE's definition", stacklevel=4)
        return [privleak(auc, reference)]
    if metric == "forget_quality":
        forget = splits["forget"]
        ours = truth_ratios(model, tokenizer, forget.questions, forget.paraphrased, forget.perturbed, **scoring)
        theirs = truth_ratios(retain_model, tokenizer, forget.questions, forget.paraphrased, forget.perturbed,
                              **scoring)
        return [forget_quality(ours.tolist(), theirs.tolist())]
    raise ValueError(metric)


def _formatted(data: QASet, prompt_template: str, chat: bool, tokenizer) -> list[dict[str, str]]:
    from .prompts import render_prompts

    prompts = render_prompts(tokenizer, data.questions, prompt_template, chat)
    return [{"prompt": p, "completion": a} for p, a in zip(prompts, data.answers)]


def _min_k_auc(model, tokenizer, mia_data, batch_size) -> float:
    from .mia import attack_auc

    members = mia_scores(model, tokenizer, mia_data["forget"], "min_k", batch_size=batch_size, progress=False)
    nonmembers = mia_scores(model, tokenizer, mia_data["holdout"], "min_k", batch_size=batch_size, progress=False)
    return attack_auc(members, nonmembers)


def _check_tokenizer(model, retain_model, tokenizer) -> None:
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    other = getattr(getattr(retain_model, "config", None), "vocab_size", None)
    if vocab is not None and other is not None and vocab != other:
        raise ValueError(
            f"the retain model has a vocabulary of {other} tokens and the model {vocab}: the metrics score both "
            "with one tokenizer, so the retain model must share the model's tokenizer"
        )


class UnlearningEvaluationCallback(TrainerCallback):
    """Runs :func:`evaluate_unlearning` before training and every ``every_n_steps`` steps, puts the values in the
    trainer's log history (``unlearning/<split>_<metric>``) and warns once when the mean answer log-probability of
    ``utility_split`` falls by more than ``max_utility_drop`` nats from its value before training.

    Example:
        >>> callback = UnlearningEvaluationCallback(tokenizer, forget, retain, every_n_steps=10)
        >>> GradDiffTrainer(model, args, train_dataset=forget_texts, retain_dataset=retain_texts,
        ...                 processing_class=tokenizer, callbacks=[callback]).train()
    """

    def __init__(
        self,
        tokenizer,
        forget: Any,
        retain: Any = None,
        holdout: Any = None,
        every_n_steps: int = 50,
        metrics: Sequence[str] = ("log_prob",),
        max_utility_drop: float = 0.5,
        utility_split: str = "retain",
        **evaluate_kwargs: Any,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if max_utility_drop <= 0:
            raise ValueError(f"max_utility_drop is a drop in nats, > 0; got {max_utility_drop}")
        if utility_split not in ("retain", "holdout"):
            raise ValueError(f"utility_split must be 'retain' or 'holdout', got {utility_split!r}")
        if {"retain": retain, "holdout": holdout}[utility_split] is None:
            raise ValueError(f"utility_split={utility_split!r} needs that data: pass {utility_split}=...")
        self.tokenizer = tokenizer
        self.data = {"forget": forget, "retain": retain, "holdout": holdout}
        self.every_n_steps = every_n_steps
        self.metrics = tuple(dict.fromkeys(("log_prob", *metrics)))
        self.max_utility_drop = max_utility_drop
        self.utility_split = utility_split
        self.evaluate_kwargs = {"progress": False, **evaluate_kwargs}
        self.history: list[tuple[int, UnlearningEvaluation]] = []
        self._warned = False

    def _evaluate(self, model, state) -> None:
        result = evaluate_unlearning(model, self.tokenizer, **self.data, metrics=self.metrics, **self.evaluate_kwargs)
        self.history.append((state.global_step, result))
        entry = {f"unlearning/{split}_{name}": value for split, values in result.to_dict().items()
                 for name, value in values.items()}
        state.log_history.append({**entry, "step": state.global_step})
        baseline = self.history[0][1].get("answer_log_prob", self.utility_split)
        now = result.get("answer_log_prob", self.utility_split)
        if not self._warned and baseline is not None and now is not None and baseline - now > self.max_utility_drop:
            self._warned = True
            warnings.warn(
                f"step {state.global_step}: the {self.utility_split} answers' mean log-prob fell from {baseline:.2f} "
                f"to {now:.2f} ({baseline - now:.2f} nats, more than max_utility_drop={self.max_utility_drop}): "
                "unlearning is damaging what the model should keep. Lower the learning rate, raise the retain "
                "weight, or stop earlier.",
                stacklevel=2,
            )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self._evaluate(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None and state.global_step % self.every_n_steps == 0:
            self._evaluate(model, state)
