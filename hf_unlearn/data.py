"""Tokenisation of forget / retain datasets in TRL's standard formats, padding collator and retain pairing.

Accepted formats (a ``datasets.Dataset`` or a plain list of dicts or strings):

* language modelling: ``{"text": ...}`` (a list of strings is read as this) -- every token is scored;
* prompt-completion: ``{"prompt": ..., "completion": ...}`` -- only the completion tokens are scored;
* conversational: ``{"messages": [...]}`` (the last assistant turn is scored) or ``prompt``/``completion`` given
  as lists of ``{"role", "content"}`` messages, rendered with the tokenizer's chat template;
* preference (IdkDPO): ``{"prompt", "chosen", "rejected"}``, ``chosen`` the alternate or refusal answer,
  ``rejected`` the answer to forget.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset

from .losses import IGNORE_INDEX

LANGUAGE_MODELING = "language_modeling"
PROMPT_COMPLETION = "prompt_completion"
CONVERSATIONAL = "conversational"
PREFERENCE = "preference"

_FORMAT_COLUMNS = {
    PREFERENCE: ("prompt", "chosen", "rejected"),
    PROMPT_COMPLETION: ("prompt", "completion"),
    CONVERSATIONAL: ("messages",),
    LANGUAGE_MODELING: ("text",),
}
INDEX_COLUMN = "example_index"


def to_dataset(data: Any, name: str) -> Dataset:
    """Turn a ``Dataset``, a list of dicts or a list of strings into a ``Dataset``, rejecting empty input."""
    if data is None:
        raise ValueError(f"{name} is None: pass a datasets.Dataset or a list of dicts/strings")
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        rows = list(data)
        if rows and all(isinstance(row, str) for row in rows):
            rows = [{"text": row} for row in rows]
        if not all(isinstance(row, dict) for row in rows):
            raise ValueError(f"{name} must be a datasets.Dataset or a list of dicts or strings, not a mixed list")
        dataset = Dataset.from_list(rows)
    else:
        raise ValueError(f"{name} must be a datasets.Dataset or a list of dicts/strings, got {type(data).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: unlearning needs at least one example")
    return dataset


def detect_format(columns: Sequence[str], name: str, preference: bool = False) -> str:
    """Name the dataset format from its columns, or raise an error that says which columns are expected."""
    columns = set(columns)
    if preference:
        missing = [c for c in _FORMAT_COLUMNS[PREFERENCE] if c not in columns]
        if missing:
            raise ValueError(
                f"{name} needs the columns 'prompt', 'chosen' (the alternate or refusal answer) and 'rejected' "
                f"(the answer to forget) for a preference method; missing {missing}, found {sorted(columns)}"
            )
        return PREFERENCE
    for fmt in (PROMPT_COMPLETION, CONVERSATIONAL, LANGUAGE_MODELING):
        if all(c in columns for c in _FORMAT_COLUMNS[fmt]):
            return fmt
    raise ValueError(
        f"{name} has columns {sorted(columns)}, none of the supported formats: 'text' (language modelling), "
        "'prompt' + 'completion', or 'messages' (conversational). Rename your columns, e.g. "
        "dataset.rename_columns({'question': 'prompt', 'answer': 'completion'})."
    )


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "conversational data needs a tokenizer with a chat template: set tokenizer.chat_template or pass "
            "the data as plain 'prompt'/'completion' strings"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _split_prompt_completion(tokenizer, prompt: Any, completion: Any) -> tuple[str, str, bool]:
    """Return ``(prompt_text, completion_text, prompt_has_special_tokens)``."""
    if _is_conversation(prompt):
        prompt_text = _render_chat(tokenizer, prompt, add_generation_prompt=True)
        full = _render_chat(tokenizer, prompt + completion, add_generation_prompt=False)
        if not full.startswith(prompt_text):
            raise ValueError("the chat template renders the prompt differently inside the full conversation")
        return prompt_text, full[len(prompt_text) :], True
    return prompt, completion, False


def tokenize_pair(tokenizer, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the completion, tokenised separately so the boundary is exact."""
    prompt_text, completion_text, rendered = _split_prompt_completion(tokenizer, prompt, completion)
    # A rendered chat template already carries BOS and role tokens.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=not rendered)["input_ids"] if prompt_text else []
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    return list(prompt_ids), list(completion_ids)


def _truncate(ids: list[int], labels: list[int], max_length: int | None) -> tuple[list[int], list[int], bool]:
    if max_length is None or len(ids) <= max_length:
        return ids, labels, False
    return ids[:max_length], labels[:max_length], True


def _encode(prompt_ids: list[int], completion_ids: list[int], max_length: int | None, prefix: str = ""):
    ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    ids, labels, truncated = _truncate(ids, labels, max_length)
    return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": [1] * len(ids), f"{prefix}labels": labels}, truncated


def tokenize_example(example: dict, tokenizer, fmt: str, max_length: int | None) -> tuple[dict, bool]:
    """Tokenise one example; returns the new columns and whether anything was truncated."""
    if fmt == LANGUAGE_MODELING:
        ids = tokenizer(example["text"])["input_ids"]
        return _encode([], list(ids), max_length)
    if fmt == CONVERSATIONAL:
        messages = example["messages"]
        if not _is_conversation(messages) or messages[-1].get("role") != "assistant":
            raise ValueError(
                "each 'messages' conversation must be a list of {'role','content'} ending with an assistant turn"
            )
        return _encode(*tokenize_pair(tokenizer, messages[:-1], messages[-1:]), max_length)
    if fmt == PROMPT_COMPLETION:
        return _encode(*tokenize_pair(tokenizer, example["prompt"], example["completion"]), max_length)
    if fmt == PREFERENCE:
        chosen, t1 = _encode(*tokenize_pair(tokenizer, example["prompt"], example["chosen"]), max_length, "chosen_")
        rejected, t2 = _encode(
            *tokenize_pair(tokenizer, example["prompt"], example["rejected"]), max_length, "rejected_"
        )
        return {**chosen, **rejected}, t1 or t2
    raise ValueError(f"unknown dataset format {fmt!r}")


def prepare_dataset(
    data: Any, tokenizer, name: str, max_length: int | None, preference: bool = False, num_proc: int | None = None
) -> Dataset:
    """Validate and tokenise ``data``; adds ``example_index`` (the row number, used for retain pairing).

    Sequences longer than ``max_length`` are truncated, with one warning that says how many.
    Idempotent: an already tokenised dataset (with ``input_ids`` or ``chosen_input_ids``) is returned as is.
    """
    dataset = to_dataset(data, name)
    if "input_ids" in dataset.column_names or "chosen_input_ids" in dataset.column_names:
        if INDEX_COLUMN not in dataset.column_names:
            dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
        return dataset
    fmt = detect_format(dataset.column_names, name, preference=preference)

    def _map(example, index):
        out, truncated = tokenize_example(example, tokenizer, fmt, max_length)
        return {**out, INDEX_COLUMN: index, "_truncated": truncated}

    kwargs = {"num_proc": num_proc, "desc": f"Tokenizing {name}"} if num_proc else {"desc": f"Tokenizing {name}"}
    dataset = dataset.map(_map, with_indices=True, remove_columns=dataset.column_names, **kwargs)
    n_truncated = sum(dataset["_truncated"])
    if n_truncated:
        warnings.warn(
            f"{n_truncated} of {len(dataset)} examples of {name} are longer than max_length={max_length} tokens "
            "and were truncated; raise max_length to keep them whole",
            stacklevel=3,
        )
    dataset = dataset.remove_columns("_truncated")
    empty = sum(1 for labels in dataset[_labels_column(dataset)] if all(x == IGNORE_INDEX for x in labels[1:]))
    if empty == len(dataset):
        raise ValueError(
            f"no example of {name} has a token to score: the completions are empty or max_length={max_length} cut "
            "them off"
        )
    return dataset


def _labels_column(dataset: Dataset) -> str:
    return "labels" if "labels" in dataset.column_names else "rejected_labels"


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token one (its EOS token), with a warning."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(
            "the tokenizer has neither a pad token nor an EOS token: add one with "
            "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings"
        )
    warnings.warn(
        f"the tokenizer has no pad token; using its EOS token {tokenizer.eos_token!r} for padding "
        "(padding never enters the losses: the attention mask and -100 labels exclude it)",
        stacklevel=3,
    )
    tokenizer.pad_token = tokenizer.eos_token


@dataclass
class UnlearningCollator:
    """Right-pads every ``*input_ids`` / ``*attention_mask`` / ``*labels`` group of the features.

    The tokenizer's attention mask is kept as is (never rebuilt from ``input_ids != pad``, which would mask real
    EOS tokens when pad = EOS). Other per-token columns are padded with the value ``extra_padding`` gives them;
    numeric columns (``example_index``, precomputed reference log-probs) are stacked into tensors.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    extra_padding: dict[str, int] = field(default_factory=dict)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if key.endswith("input_ids") or key.endswith("attention_mask") or key.endswith("labels"):
                pad_value = (
                    self.pad_token_id
                    if key.endswith("input_ids")
                    else 0
                    if key.endswith("attention_mask")
                    else IGNORE_INDEX
                )
                batch[key] = self._pad(values, pad_value)
            elif key in self.extra_padding:
                batch[key] = self._pad(values, self.extra_padding[key])
            elif isinstance(values[0], (int, float, bool)) or torch.is_tensor(values[0]):
                batch[key] = torch.as_tensor(values)
        return batch

    def _pad(self, sequences: list[list[int]], value: int) -> torch.Tensor:
        length = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = torch.full((len(sequences), length), value, dtype=torch.long)
        for i, s in enumerate(sequences):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out


def retain_indices(forget_indices: Sequence[int], num_retain: int, seed: int, rank: int, epoch: int) -> list[int]:
    """Retain example paired with each forget example: a pure function of (seed, rank, epoch, forget index).

    Stateless, so the pairing is deterministic for a seed, differs between ranks and epochs, survives a resume
    without saved state, and does not depend on the batch size or gradient accumulation (a forget example
    always meets the same retain example in a given epoch).
    """
    out = []
    for index in forget_indices:
        digest = hashlib.blake2b(f"{seed}:{rank}:{epoch}:{int(index)}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") % num_retain)
    return out
