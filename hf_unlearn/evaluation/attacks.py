"""Attacks on unlearning: does the forgotten knowledge come back? Relearning (a few fine-tuning steps on related
text), jailbreak prompts, and quantization (rounding the weights to 4 bits)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..data import UnlearningCollator, padding_id, prepare_dataset
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
    pad = padding_id(tokenizer)
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
            # Pinned memory only helps copies to a GPU; on the CPU torch warns about it.
            dataloader_pin_memory=_device(attacker).type == "cuda",
            disable_tqdm=True,
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


def _quantize(weight: torch.Tensor, bits: int, group_size: int, input_dim: int) -> torch.Tensor:
    """Round-to-nearest, asymmetric (min-max) quantization in groups of ``group_size`` along the input dimension."""
    w = weight.detach().float().movedim(input_dim, -1)
    shape = w.shape
    columns = shape[-1]
    pad = (-columns) % group_size
    w = torch.nn.functional.pad(w, (0, pad)).reshape(*shape[:-1], -1, group_size)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    levels = 2**bits - 1
    scale = ((high - low) / levels).clamp(min=1e-12)
    quantized = ((w - low) / scale).round().clamp(0, levels) * scale + low
    quantized = quantized.reshape(*shape[:-1], columns + pad)[..., :columns]
    return quantized.movedim(-1, input_dim).to(weight.dtype)


@contextmanager
def quantized_weights(
    model: nn.Module, bits: int = 4, group_size: int = 128, include_output_embeddings: bool = False
) -> Iterator[nn.Module]:
    """Temporarily round every linear weight of ``model`` to ``bits`` bits (group-wise round-to-nearest, as a
    4-bit checkpoint would hold them); the original weights come back bit-exactly on exit, also after an exception.
    The output embedding (LM head) keeps full precision unless ``include_output_embeddings``, as quantized
    checkpoints usually do.

    Example:
        >>> with quantized_weights(unlearned, bits=4):
        ...     answers = answer_questions(unlearned, tokenizer, questions)
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    saved = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if module is head and not include_output_embeddings:
                    continue
                if isinstance(module, (nn.Linear, Conv1D)):
                    # nn.Linear stores (out, in), GPT-2's Conv1D (in, out): the groups run along the inputs.
                    input_dim = 0 if isinstance(module, Conv1D) else 1
                    saved.append((module.weight, module.weight.detach().clone()))
                    module.weight.copy_(_quantize(module.weight, bits, group_size, input_dim))
        if not saved:
            raise ValueError("the model has no linear layer to quantize")
        yield model
    finally:
        with torch.no_grad():
            for parameter, original in saved:
                parameter.copy_(original)


def quantization_attack(
    unlearned: nn.Module,
    tokenizer,
    questions: Sequence[str],
    reference_answers: Sequence[str],
    bits: int = 4,
    group_size: int = 128,
    max_new_tokens: int = 50,
    **answer_kwargs: Any,
) -> dict[str, Any]:
    """Does rounding the unlearned model's weights to ``bits`` bits bring the forgotten answers back? (Zhang et al.,
    "Catastrophic Failure of LLM Unlearning via Quantization", 2024: for several methods 4-bit models recovered much
    of the forgotten knowledge.) Simulated on the model's own weights (:func:`quantized_weights`), so it runs on any
    device; reports BLEU / ROUGE-L of the answers against ``reference_answers`` (the original model's, or gold ones)
    and the answers' mean log-probability, before and after. The model is left unchanged.

    Example:
        >>> quantization_attack(unlearned, tokenizer, questions, original_answers)["recovered_rouge_l"]
    """
    from .likelihood import answer_log_probs

    if len(reference_answers) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(reference_answers)} reference answers")

    def measure() -> dict[str, Any]:
        answers = answer_questions(unlearned, tokenizer, questions, max_new_tokens=max_new_tokens, **answer_kwargs)
        overlap = text_overlap(answers, reference_answers)
        log_prob = answer_log_probs(unlearned, tokenizer, questions, reference_answers).mean.mean()
        return {"bleu": overlap["bleu"], "rouge_l": overlap["rouge_l"], "reference_log_prob": float(log_prob),
                "answers": answers}

    before = measure()
    with quantized_weights(unlearned, bits=bits, group_size=group_size):
        after = measure()
    return {
        "bits": bits,
        "group_size": group_size,
        "before": before,
        "after": after,
        "recovered_bleu": after["bleu"] - before["bleu"],
        "recovered_rouge_l": after["rouge_l"] - before["rouge_l"],
        "recovered_log_prob": after["reference_log_prob"] - before["reference_log_prob"],
    }
