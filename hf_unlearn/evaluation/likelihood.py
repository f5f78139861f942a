"""Teacher-forced scores of answers given prompts: the building block of every likelihood-based metric."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import padding_id
from ..eval_mode import eval_mode
from .prompts import DEFAULT_PROMPT_TEMPLATE, render_prompts
from .results import MetricValue


@dataclass
class AnswerLogProbs:
    """Per-example teacher-forced scores of answers (float32, computed in float32 whatever the model's dtype).

    Attributes:
        sum: summed log-probability of each answer's tokens, ``(N,)``.
        mean: ``sum / tokens``, ``(N,)``.
        tokens: number of answer tokens, ``(N,)``.
        token_log_probs: each answer's per-token log-probabilities.
        greedy_match: per answer token, whether the model's top-1 prediction is that token.
        min_k_plus_plus: per answer token, Min-K%++'s ``(log p(y_t) - μ_t) / σ_t`` (``μ_t``, ``σ_t²`` the mean and
            variance of ``log p_t(v)`` under ``p_t``), when requested.
    """

    sum: torch.Tensor
    mean: torch.Tensor
    tokens: torch.Tensor
    token_log_probs: list[torch.Tensor]
    greedy_match: list[torch.Tensor]
    min_k_plus_plus: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.sum.numel())


def _encode(tokenizer, prompts, answers, prompt_template, chat, system_prompt, max_length, add_eos):
    rendered = render_prompts(tokenizer, prompts, prompt_template, chat, system_prompt) if prompts else []
    examples = []
    for index, (prompt, answer) in enumerate(zip(rendered, answers)):
        if not isinstance(answer, str):
            raise ValueError(f"answer {index} is a {type(answer).__name__}, not a string")
        # Tokenised separately so that the boundary is exact; a rendered chat template already holds BOS.
        prompt_ids = list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"]) if prompt else []
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if add_eos and tokenizer.eos_token_id is not None:
            answer_ids = [*answer_ids, tokenizer.eos_token_id]
        if not answer_ids:
            raise ValueError(f"answer {index} ({answer!r}) has no token after tokenisation: nothing to score")
        if not prompt_ids:
            # A text scored from its start: its first token has no context, so it is context, not scored.
            prompt_ids, answer_ids = answer_ids[:1], answer_ids[1:]
            if not answer_ids:
                raise ValueError(f"text {index} ({answer!r}) has a single token: nothing follows it to score")
        ids = prompt_ids + answer_ids
        if max_length is not None and len(ids) > max_length:
            # Keep the answer: cut the prompt from the left (its end is what the answer follows).
            keep = max_length - len(answer_ids)
            if keep < 1:
                raise ValueError(f"answer {index} has {len(answer_ids)} tokens, more than max_length={max_length}")
            prompt_ids = prompt_ids[-keep:]
            ids = prompt_ids + answer_ids
        examples.append((ids, len(prompt_ids)))
    return examples


@torch.no_grad()
def answer_log_probs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 8,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    system_prompt: str | None = None,
    padding_side: str = "right",
    max_length: int | None = None,
    add_eos: bool = False,
    min_k_plus_plus: bool = False,
    progress: bool | None = None,
) -> AnswerLogProbs:
    """Log-probability of each answer given its prompt, teacher-forced, one batched forward pass per batch.

    Each prompt is formatted with ``prompt_template`` (the library's ``"Question: {q}\\nAnswer:"`` by default; use
    ``"{q}"`` for prompts that are already complete, and an empty prompt with ``"{q}"`` to score a text from its
    start) or, with ``chat=True``, rendered as the user turn of the tokenizer's chat template. Prompt and answer are
    tokenised separately, so the boundary is exact. Log-softmax is taken in float32. Left and right padding give the
    same numbers (position ids follow the attention mask). ``add_eos`` scores an end-of-sequence token after each
    answer (open-unlearning's convention).

    Example:
        >>> scores = answer_log_probs(model, tokenizer, ["Who wrote Hamlet?"], [" Shakespeare"])
        >>> scores.mean, scores.tokens
    """
    prompts, answers = list(prompts), list(answers)
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers: pair them one to one")
    if not prompts:
        raise ValueError("no prompt/answer pair to score: the inputs are empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    examples = _encode(tokenizer, prompts, answers, prompt_template, chat, system_prompt, max_length, add_eos)
    pad = padding_id(tokenizer)
    device = next(model.parameters()).device
    token_lps, matches, zscores = [], [], []
    batches = range(0, len(examples), batch_size)
    show = progress if progress is not None else len(batches) > 4
    with eval_mode(model):
        for start in tqdm(batches, desc="Scoring answers", disable=not show):
            chunk = examples[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            offsets = []
            for row, (ids, _) in enumerate(chunk):
                offset = width - len(ids) if padding_side == "left" else 0
                input_ids[row, offset : offset + len(ids)] = torch.tensor(ids)
                mask[row, offset : offset + len(ids)] = 1
                offsets.append(offset)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device)
            ).logits
            for row, (ids, prompt_length) in enumerate(chunk):
                # Logits at position p predict token p + 1: the answer's tokens are predicted from one step earlier.
                first = offsets[row] + prompt_length
                positions = torch.arange(first - 1, offsets[row] + len(ids) - 1, device=logits.device)
                targets = input_ids[row, first : offsets[row] + len(ids)].to(logits.device)
                log_probs = torch.log_softmax(logits[row, positions].float(), dim=-1)
                chosen = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                token_lps.append(chosen.cpu())
                matches.append((log_probs.argmax(-1) == targets).cpu())
                if min_k_plus_plus:
                    probs = log_probs.exp()
                    mean = (probs * log_probs).sum(-1)
                    variance = (probs * (log_probs - mean.unsqueeze(-1)).square()).sum(-1)
                    zscores.append(((chosen - mean) / variance.clamp(min=1e-12).sqrt()).cpu())
    sums = torch.stack([t.sum() for t in token_lps])
    counts = torch.tensor([t.numel() for t in token_lps])
    return AnswerLogProbs(
        sum=sums,
        mean=sums / counts,
        tokens=counts,
        token_log_probs=token_lps,
        greedy_match=matches,
        min_k_plus_plus=zscores if min_k_plus_plus else None,
    )


def mean_answer_log_prob(model, tokenizer, questions, answers, split: str = "", **kwargs: Any) -> MetricValue:
    """Mean over items of the per-token log-probability of the answer (the plainest measure of "is it gone")."""
    scores = answer_log_probs(model, tokenizer, questions, answers, **kwargs)
    return MetricValue("answer_log_prob", float(scores.mean.mean()), split, "",
                       {"per_item": scores.mean.tolist(), "tokens": scores.tokens.tolist()})
