"""Attacks on unlearning: does the forgotten knowledge come back? Relearning (a few fine-tuning steps on related
text), jailbreak prompts, and quantization (rounding the weights to 4 bits)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..data import UnlearningCollator, prepare_dataset
from .generation import answer_questions
from .jailbreak import Concept, jailbreak_prompts
from .overlap import text_overlap


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def relearning_attack(
    unlearned: nn.Module,
    tokenizer,
    text: str | Sequence[str],
    questions: Sequence[str],
    reference_answers: Sequence[str],
    steps: int = 20,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    max_length: int = 256,
    max_new_tokens: int = 50,
    seed: int = 0,
    **answer_kwargs: Any,
) -> dict[str, Any]:
    """Fine-tune a *copy* of the unlearned model on ``text`` for ``steps`` steps and measure what comes back.

    ``text`` should be related to the concept but not the forget text itself; ``reference_answers`` are the
    original model's answers to ``questions``. Reports BLEU / ROUGE-L of the unlearned and of the relearned
    model's answers against them, and the gain. The unlearned model itself is not modified.

    Example:
        >>> ref = answer_questions(original, tokenizer, questions)
        >>> relearning_attack(unlearned, tokenizer, related_text, questions, ref, steps=20)["recovered_bleu"]
    """
    from transformers import Trainer, TrainingArguments

    if len(reference_answers) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(reference_answers)} reference answers")
    before = answer_questions(unlearned, tokenizer, questions, max_new_tokens=max_new_tokens, **answer_kwargs)
    attacker = copy.deepcopy(unlearned)
    texts = [text] if isinstance(text, str) else list(text)
    dataset = prepare_dataset(texts, tokenizer, "relearning text", max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            save_strategy="no",
            report_to="none",
            seed=seed,
            logging_steps=max(1, steps // 4),
            use_cpu=_device(attacker).type == "cpu",
        )
        Trainer(
            model=attacker,
            args=args,
            train_dataset=dataset.remove_columns("example_index"),
            data_collator=UnlearningCollator(pad),
        ).train()
    after = answer_questions(attacker, tokenizer, questions, max_new_tokens=max_new_tokens, **answer_kwargs)
    del attacker
    score_before, score_after = text_overlap(before, reference_answers), text_overlap(after, reference_answers)
    return {
        "steps": steps,
        "before": {"bleu": score_before["bleu"], "rouge_l": score_before["rouge_l"], "answers": before},
        "after": {"bleu": score_after["bleu"], "rouge_l": score_after["rouge_l"], "answers": after},
        "recovered_bleu": score_after["bleu"] - score_before["bleu"],
        "recovered_rouge_l": score_after["rouge_l"] - score_before["rouge_l"],
    }


def jailbreak_attack(
    original: nn.Module,
    unlearned: nn.Module,
    tokenizer,
    vector: Concept,
    questions: Sequence[str] | None = None,
    translations: Mapping[str, Sequence[str]] | None = None,
    max_new_tokens: int = 50,
    **prompt_kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Score the unlearned model's answers to jailbreak prompts against the original's answers to the same prompts.

    One entry per prompt family (role play, grandmother, in-context, translated, ...): BLEU / ROUGE-L, where high
    values mean the jailbreak brought the concept back.

    Example:
        >>> scores = jailbreak_attack(original, unlearned, tokenizer, concept_vector)
        >>> {family: s["bleu"] for family, s in scores.items()}
    """
    prompts = jailbreak_prompts(vector, questions=questions, translations=translations, **prompt_kwargs)
    out = {}
    for family, family_prompts in prompts.items():
        reference = answer_questions(
            original, tokenizer, family_prompts, max_new_tokens=max_new_tokens, prompt_template="{q}"
        )
        answers = answer_questions(
            unlearned, tokenizer, family_prompts, max_new_tokens=max_new_tokens, prompt_template="{q}"
        )
        overlap = text_overlap(answers, reference)
        out[family] = {
            "bleu": overlap["bleu"],
            "rouge_l": overlap["rouge_l"],
            "prompts": family_prompts,
            "original": reference,
            "unlearned": answers,
        }
    return out
