"""Question + answer probes scored by teacher forcing, with an exact answer mask for left or right padding."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data import padding_id
from ..evaluation.generation import answer_questions
from ..evaluation.prompts import DEFAULT_PROMPT_TEMPLATE as DEFAULT_TEMPLATE


@dataclass
class Probe:
    """A prompt (the question in its template) and the answer whose logits are compared (the original model's
    greedy answer or a gold one)."""

    prompt: str
    answer: str


@dataclass
class ProbeBatch:
    """Tokenised probes. ``answer_mask[b, t]`` is true where the logits at ``t`` predict an answer token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor

    def to(self, device) -> ProbeBatch:
        return ProbeBatch(self.input_ids.to(device), self.attention_mask.to(device), self.answer_mask.to(device))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def make_probes(
    original: nn.Module,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str] | None = None,
    max_new_tokens: int = 30,
    prompt_template: str = DEFAULT_TEMPLATE,
) -> list[Probe]:
    """Probes for ``questions``: with the given gold ``answers``, else the original model's greedy answers.

    Example:
        >>> probes = make_probes(original, tokenizer, ["Who wrote Harry Potter?"])
        >>> table = activation_patching(original, unlearned, tokenizer, probes)
    """
    if answers is None:
        prompts = [prompt_template.format(q=q) for q in questions]
        answers = answer_questions(original, tokenizer, prompts, max_new_tokens=max_new_tokens, prompt_template="{q}")
    if len(answers) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    probes, dropped = [], []
    for question, answer in zip(questions, answers):
        probe = Probe(prompt_template.format(q=question), answer)
        # Dropped here, before anything trains: an empty answer (a greedy answer that is only an EOS) cannot be
        # scored, and finding that out at the first patching run wastes the whole unlearning run before it.
        if answer.strip() and tokenizer(answer, add_special_tokens=False)["input_ids"]:
            probes.append(probe)
        else:
            dropped.append(question)
    if dropped:
        if not probes:
            raise ValueError(f"no probe can be scored: every answer is empty after tokenisation ({dropped[:5]})")
        warnings.warn(f"dropped {len(dropped)} probe(s) whose answer is empty after tokenisation: {dropped}",
                      stacklevel=2)
    return probes


def encode_probes(tokenizer, probes: Sequence[Probe], padding_side: str = "left") -> ProbeBatch:
    """Tokenise ``prompt + answer`` (separately, so the answer span is exact) and pad to one batch.

    For answer tokens at positions ``[p, p+n-1]`` the mask selects logit positions ``[p-1, p+n-2]``: the logits at
    ``t`` predict token ``t+1`` (the reference notebooks scored the last ``n`` positions, one too late).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: use 'left' or 'right'")
    if not probes:
        raise ValueError("no probes given")
    pad_id = padding_id(tokenizer)
    rows = []
    for probe in probes:
        prompt_ids = list(tokenizer(probe.prompt)["input_ids"])
        answer_ids = list(tokenizer(probe.answer, add_special_tokens=False)["input_ids"])
        if not prompt_ids or not answer_ids:
            raise ValueError(f"probe {probe.prompt!r} has an empty prompt or answer after tokenisation")
        rows.append((prompt_ids, answer_ids))
    length = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    answer_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (prompt_ids, answer_ids) in enumerate(rows):
        ids = prompt_ids + answer_ids
        offset = length - len(ids) if padding_side == "left" else 0
        input_ids[i, offset : offset + len(ids)] = torch.tensor(ids)
        attention_mask[i, offset : offset + len(ids)] = 1
        first_answer = offset + len(prompt_ids)
        answer_mask[i, first_answer - 1 : first_answer + len(answer_ids) - 1] = True
    return ProbeBatch(input_ids, attention_mask, answer_mask)
