"""One call for the commonest job: make a model forget a concept it knows, and show what changed.

Example:
    >>> from hf_unlearn.recipes import unlearn_concept
    >>> result = unlearn_concept(model, tokenizer, "Harry Potter", ["Who is Harry Potter's best friend?"])
    >>> print(result)
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic_files import atomic_write_json
from .evaluation import UnlearningEvaluation, answer_questions, evaluate_unlearning
from .evaluation.prompts import DEFAULT_PROMPT_TEMPLATE
from .general_knowledge import general_knowledge
from .methods import get_method

__all__ = ["ConceptUnlearningResult", "IDK_ANSWER", "unlearn_concept"]

#: the refusal a preference method (IdkDPO) is taught to prefer over the concept's answers.
IDK_ANSWER = "I don't know."


@dataclass
class ConceptUnlearningResult:
    """What :func:`unlearn_concept` did: the unlearned model and a before/after table.

    ``forget`` and ``retain`` hold one row per question: ``question``, ``before`` (the original greedy answer, also
    the training target) and ``after``. ``metrics_before`` / ``metrics_after`` are :func:`evaluate_unlearning` on the
    same questions with the original answers as references.

    Example:
        >>> result = unlearn_concept(model, tokenizer, "The Moon", questions)
        >>> print(result.to_markdown()); result.to_json("moon.json")
    """

    model: nn.Module
    concept: str
    method: str
    forget: list[dict[str, str]]
    retain: list[dict[str, str]]
    metrics_before: UnlearningEvaluation
    metrics_after: UnlearningEvaluation
    config: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    concept_vectors: list[tuple[int, int]] | None = None

    def changed(self, split: str = "forget") -> float:
        """The fraction of ``split``'s answers that changed."""
        rows = self.forget if split == "forget" else self.retain
        return sum(r["before"].strip() != r["after"].strip() for r in rows) / max(len(rows), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "method": self.method,
            "config": self.config,
            "forget": self.forget,
            "retain": self.retain,
            "changed": {"forget": self.changed("forget"), "retain": self.changed("retain")},
            "metrics": {"before": self.metrics_before.to_dict(), "after": self.metrics_after.to_dict()},
            "concept_vectors": [list(v) for v in self.concept_vectors] if self.concept_vectors else None,
            "log_history": self.log_history,
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` atomically (strict JSON)."""
        return atomic_write_json(path, _finite(self.to_dict()), indent=2)

    def to_markdown(self, max_rows: int = 10, width: int = 60) -> str:
        """Answers before and after (first ``max_rows`` of each split) and the metrics side by side."""

        def cell(text: str) -> str:
            text = " ".join(text.split()).replace("|", "\\|")
            return text if len(text) <= width else text[: width - 1] + "…"

        lines = [f"## Unlearning {self.concept!r} with {self.method}", ""]
        for split, rows in (("forget", self.forget), ("retain", self.retain)):
            lines += [
                f"### {split} questions ({len(rows)}, {self.changed(split):.0%} of answers changed)",
                "",
                "| question | before | after |",
                "|---|---|---|",
            ]
            lines += [f"| {cell(r['question'])} | {cell(r['before'])} | {cell(r['after'])} |" for r in rows[:max_rows]]
            if len(rows) > max_rows:
                lines.append(f"| … {len(rows) - max_rows} more | | |")
            lines.append("")
        lines += ["### metrics", "", self.metrics_before.to_markdown(self.metrics_after)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become ``None``."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _answered(questions: Sequence[str], answers: Sequence[str], name: str) -> tuple[list[str], list[str]]:
    """Drop questions the model answered with nothing: there is no answer to forget or keep."""
    kept = [(q, a) for q, a in zip(questions, answers) if a.strip()]
    if len(kept) < len(questions):
        warnings.warn(f"{len(questions) - len(kept)} {name} question(s) got an empty answer and are left out")
    return [q for q, _ in kept], [a for _, a in kept]


def _rows(questions, answers, prompt_template: str, chat: bool) -> list[dict[str, Any]]:
    """Prompt-completion training rows in the same prompt the answers were generated from."""
    if chat:
        return [
            {"prompt": [{"role": "user", "content": prompt_template.format(q=q)}],
             "completion": [{"role": "assistant", "content": a.strip()}]}
            for q, a in zip(questions, answers)
        ]
    return [{"prompt": prompt_template.format(q=q), "completion": a} for q, a in zip(questions, answers)]


def unlearn_concept(
    model: nn.Module,
    tokenizer: Any,
    concept: str,
    questions: Sequence[str],
    method: str = "npo",
    retain_questions: Sequence[str] | None = None,
    steps: int = 30,
    learning_rate: float | None = None,
    output_dir: str | None = None,
    max_new_tokens: int = 32,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    num_concept_vectors: int = 10,
    progress: bool = True,
    **config_overrides: Any,
) -> ConceptUnlearningResult:
    """Make ``model`` forget ``concept`` with a registered method, and return a before/after table.

    The forget set is ``questions`` with the model's own greedy answers (what it says now is what it should stop
    saying). The retain set is ``retain_questions`` with the model's answers, by default the built-in
    general-knowledge pool (:mod:`hf_unlearn.general_knowledge`) minus every question that mentions the concept's
    words. The method runs from the registry with its own defaults (learning rate included unless
    ``learning_rate`` is given) for ``steps`` optimizer steps; ``config_overrides`` are any other fields of its
    config (e.g. ``retain_loss="kl"``, ``per_device_train_batch_size=8``). A preference method (IdkDPO) is taught
    to prefer ``"I don't know."``; Needle first locates ``num_concept_vectors`` concept vectors (unless
    ``concept_vectors=`` is given). Questions the model answers with nothing are left out (with a warning).

    The model is trained **in place**: pass ``copy.deepcopy(model)`` to keep the original.

    Example:
        >>> result = unlearn_concept(model, tokenizer, "Harry Potter", questions, method="npo", steps=30)
        >>> print(result); result.model.save_pretrained("unlearned")
    """
    spec = get_method(method)
    questions = [q for q in questions if isinstance(q, str) and q.strip()]
    if not questions:
        raise ValueError("questions is empty: give at least one question about the concept")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if retain_questions is None:
        retain_questions = [q for q, _ in general_knowledge(exclude=concept) if q not in questions]
    retain_questions = [q for q in retain_questions if isinstance(q, str) and q.strip()]
    if not retain_questions:
        raise ValueError("no retain questions are left: pass retain_questions=[...] unrelated to the concept")

    answer = dict(max_new_tokens=max_new_tokens, prompt_template=prompt_template, chat=chat, progress=progress)
    stages = tqdm(total=5, desc=f"Unlearning {concept!r} with {spec.name}", disable=not progress)
    stages.set_postfix_str("answering (before)")
    forget_q, forget_a = _answered(questions, answer_questions(model, tokenizer, questions, **answer), "forget")
    retain_q, retain_a = _answered(
        retain_questions, answer_questions(model, tokenizer, retain_questions, **answer), "retain"
    )
    if not forget_q:
        raise ValueError(f"the model answered none of the {len(questions)} questions: there is nothing to forget")
    if not retain_q:
        raise ValueError("the model answered none of the retain questions: there is nothing to keep")
    stages.update()

    forget_qa = [{"question": q, "answer": a} for q, a in zip(forget_q, forget_a)]
    retain_qa = [{"question": q, "answer": a} for q, a in zip(retain_q, retain_a)]
    evaluation = dict(prompt_template=prompt_template, chat=chat, max_new_tokens=max_new_tokens, progress=progress)
    stages.set_postfix_str("evaluating (before)")
    metrics_before = evaluate_unlearning(model, tokenizer, forget_qa, retain_qa, **evaluation)
    stages.update()

    forget_rows = _rows(forget_q, forget_a, prompt_template, chat)
    if spec.preference:
        idk = [IDK_ANSWER] * len(forget_q)
        refusals = _rows(forget_q, idk if chat else [" " + IDK_ANSWER] * len(forget_q), prompt_template, chat)
        forget_rows = [
            {"prompt": row["prompt"], "chosen": refusal["completion"], "rejected": row["completion"]}
            for row, refusal in zip(forget_rows, refusals)
        ]
    retain_rows = _rows(retain_q, retain_a, prompt_template, chat)

    trainer_kwargs: dict[str, Any] = {}
    located = None
    if spec.name == "needle" and config_overrides.get("concept_vectors") is None:
        from .concepts import locate_concept_vectors

        stages.set_postfix_str("locating concept vectors")
        background = general_knowledge(exclude=concept)
        vectors = locate_concept_vectors(
            model, tokenizer, concept, questions=forget_q, answers=forget_a,
            background_questions=[q for q, _ in background], background_answers=[" " + a for _, a in background],
            top_n=num_concept_vectors, prompt_template=prompt_template, chat=chat,
        )
        trainer_kwargs["vectors"] = vectors
        located = [v.location for v in vectors]

    overrides = dict(config_overrides)
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    with tempfile.TemporaryDirectory(prefix="hf_unlearn-") as scratch:
        defaults = dict(
            output_dir=output_dir or scratch,
            max_steps=steps,
            per_device_train_batch_size=min(4, len(forget_rows)),
            logging_steps=max(1, steps // 10),
            save_strategy="no",
            report_to="none",
            # Pinned memory only helps a GPU; on a CPU transformers warns about it on every run.
            dataloader_pin_memory=torch.cuda.is_available(),
            disable_tqdm=not progress,
            # The answers are greedy continuations cut at max_new_tokens: an EOS after them would be a made-up end.
            append_eos=False,
        )
        config = spec.make_config(**{**defaults, **overrides})
        stages.set_postfix_str("training")
        trainer = spec.trainer_class(
            model,
            config,
            train_dataset=forget_rows,
            retain_dataset=retain_rows if config.retain_loss != "none" else None,
            processing_class=tokenizer,
            **trainer_kwargs,
        )
        trainer.train()
        if output_dir is not None:
            trainer.save_model(output_dir)
            tokenizer.save_pretrained(output_dir)
        unlearned = trainer.model
        if located is None and spec.name == "needle":
            located = trainer.concept_vectors
        log_history = list(trainer.state.log_history)
        del trainer  # the reference model and the optimizer state go with it
    stages.update()
    unlearned.eval()

    stages.set_postfix_str("answering (after)")
    forget_after = answer_questions(unlearned, tokenizer, forget_q, **answer)
    retain_after = answer_questions(unlearned, tokenizer, retain_q, **answer)
    stages.update()
    stages.set_postfix_str("evaluating (after)")
    metrics_after = evaluate_unlearning(unlearned, tokenizer, forget_qa, retain_qa, **evaluation)
    stages.update()
    stages.close()

    settings = {"steps": steps, "learning_rate": config.learning_rate, "retain_loss": config.retain_loss,
                "prompt_template": prompt_template, "chat": chat, "max_new_tokens": max_new_tokens,
                **{k: v for k, v in overrides.items() if isinstance(v, (int, float, str, bool, list, type(None)))}}
    return ConceptUnlearningResult(
        model=unlearned,
        concept=concept,
        method=spec.name,
        forget=[{"question": q, "before": b, "after": a} for q, b, a in zip(forget_q, forget_a, forget_after)],
        retain=[{"question": q, "before": b, "after": a} for q, b, a in zip(retain_q, retain_a, retain_after)],
        metrics_before=metrics_before,
        metrics_after=metrics_after,
        config=settings,
        log_history=log_history,
        concept_vectors=[tuple(v) for v in located] if located else None,
    )
