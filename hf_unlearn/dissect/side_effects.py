"""What unlearning did besides forgetting: answers to unrelated questions, perplexity and KL on held-out text.

(How easily the knowledge comes back, the relearning, jailbreak and quantization attacks, is in
:mod:`hf_unlearn.evaluation.attacks`.)"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import losses
from ..data import UnlearningCollator, padding_id, prepare_dataset
from ..eval_mode import eval_mode
from ..evaluation.generation import answer_questions
from ..evaluation.overlap import text_overlap


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _text_batch(tokenizer, text: str | Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    texts = [text] if isinstance(text, str) else list(text)
    dataset = prepare_dataset(texts, tokenizer, "held-out text", max_length=max_length)
    pad = padding_id(tokenizer)
    return UnlearningCollator(pad)([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in dataset])


@torch.no_grad()
def side_effects(
    original: nn.Module,
    unlearned: nn.Module,
    tokenizer,
    questions: Sequence[str],
    text: str | Sequence[str],
    max_new_tokens: int = 50,
    max_length: int = 512,
    **answer_kwargs: Any,
) -> dict[str, Any]:
    """Side effects of unlearning on unrelated questions and a held-out text.

    Returns the BLEU / ROUGE-L of the unlearned model's answers against the original's (1 = unchanged), both
    models' perplexity on ``text`` and its ratio, and the mean ``KL(p_original ‖ p_unlearned)`` of the next-token
    distributions over the text's positions.

    Example:
        >>> report = side_effects(original, unlearned, tokenizer, unrelated_questions, held_out_text)
        >>> report["answers"]["bleu"], report["perplexity_ratio"], report["mean_kl"]
    """
    original_answers = answer_questions(original, tokenizer, questions, max_new_tokens=max_new_tokens, **answer_kwargs)
    unlearned_answers = answer_questions(
        unlearned, tokenizer, questions, max_new_tokens=max_new_tokens, **answer_kwargs
    )
    overlap = text_overlap(unlearned_answers, original_answers)
    batch = _text_batch(tokenizer, text, max_length)
    result: dict[str, Any] = {}
    logits = {}
    for name, model in (("original", original), ("unlearned", unlearned)):
        inputs = {k: v.to(_device(model)) for k, v in batch.items()}
        with eval_mode(model):
            logits[name] = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        log_probs, mask = losses.token_log_probs(logits[name], inputs["labels"])
        result[f"perplexity_{name}"] = math.exp(-losses.masked_mean(log_probs, mask).item())
    labels = batch["labels"].to(logits["unlearned"].device)
    mean_kl = losses.kl_divergence(logits["unlearned"], logits["original"].to(logits["unlearned"].device), labels)
    return {
        "answers": {
            "bleu": overlap["bleu"],
            "rouge_l": overlap["rouge_l"],
            "questions": list(questions),
            "original": original_answers,
            "unlearned": unlearned_answers,
        },
        **result,
        "perplexity_ratio": result["perplexity_unlearned"] / result["perplexity_original"],
        "mean_kl": float(mean_kl),
    }
