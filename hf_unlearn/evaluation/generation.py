"""Batched greedy answers to questions (left padding, the library's prompt convention)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..eval_mode import eval_mode
from .prompts import DEFAULT_PROMPT_TEMPLATE, render_prompts

__all__ = ["answer_questions"]


@torch.no_grad()
def answer_questions(
    model: nn.Module,
    tokenizer: Any,
    questions: str | Sequence[str],
    max_new_tokens: int = 100,
    batch_size: int = 16,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    system_prompt: str | None = None,
    progress: bool | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy answers of ``model`` to ``questions``, one string per question, in order.

    Each question is formatted with ``prompt_template`` (``"{q}"`` sends it verbatim, e.g. a built jailbreak prompt);
    with ``chat=True`` that text becomes the user turn of the tokenizer's chat template (after an optional
    ``system_prompt``). Batches are **left**-padded whatever the tokenizer's default (a decoder-only model continues
    from the last position, so right padding would make it continue from pad tokens); the tokenizer's
    ``padding_side``/``pad_token`` and the model's train/eval modes are restored afterwards. Only the new tokens are
    decoded, special tokens skipped. Extra keyword arguments go to ``model.generate`` and override the greedy defaults.

    Example:
        >>> answers = answer_questions(model, tokenizer, vector.questions, max_new_tokens=100)
        >>> answers[0]
    """
    from tqdm.auto import tqdm

    if isinstance(questions, str):
        questions = [questions]
    questions = list(questions)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not questions:
        return []
    prompts = render_prompts(tokenizer, questions, prompt_template, chat, system_prompt)

    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    with eval_mode(model):
        try:
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                if tokenizer.eos_token is None:
                    raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
                tokenizer.pad_token = tokenizer.eos_token
            device = next(model.parameters()).device
            is_encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
            kwargs = dict(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                          pad_token_id=tokenizer.pad_token_id)
            kwargs.update(generate_kwargs)
            answers: list[str] = []
            show = progress if progress is not None else len(batches) > 1
            for batch in tqdm(batches, desc="Generating answers", disable=not show):
                # A rendered chat template already holds the BOS token: adding special tokens would double it.
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not chat,
                                return_token_type_ids=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                output = model.generate(**enc, **kwargs)
                new_tokens = output if is_encoder_decoder else output[:, enc["input_ids"].shape[1] :]
                answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            return answers
        finally:
            tokenizer.padding_side = saved_side
            tokenizer.pad_token = saved_pad
