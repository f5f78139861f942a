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
from pyarrow import ArrowException

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
        try:
            dataset = Dataset.from_list(rows)
        except (TypeError, ValueError, OverflowError, ArrowException) as error:
            _raise_for_bad_row(rows, name)
            raise ValueError(
                f"{name} mixes value types within a column ({type(error).__name__}: {error}); give every row the "
                "same type in each column (e.g. all strings)"
            ) from None
    else:
        raise ValueError(f"{name} must be a datasets.Dataset or a list of dicts/strings, got {type(data).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: unlearning needs at least one example")
    return dataset


def _raise_for_bad_row(rows: list[dict], name: str) -> None:
    """Name the row and column that Arrow could not store (it says neither)."""
    first_type: dict[str, str] = {}
    for index, row in enumerate(rows):
        for column, value in row.items():
            if isinstance(value, str):
                _check_encodable(value, f"{name} row {index}, column {column!r}")
            if value is None:
                continue
            kind = type(value).__name__
            expected = first_type.setdefault(column, kind)
            if kind != expected:
                raise ValueError(
                    f"{name} row {index}, column {column!r} is a {kind} while earlier rows hold a {expected}; give "
                    "every row the same type in each column"
                )


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


def _encode(prompt_ids: list[int], completion_ids: list[int], max_length: int | None, prefix: str = "",
            eos_id: int | None = None):
    if eos_id is not None and completion_ids and completion_ids[-1] != eos_id:
        completion_ids = [*completion_ids, eos_id]
    ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    ids, labels, truncated = _truncate(ids, labels, max_length)
    return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": [1] * len(ids), f"{prefix}labels": labels}, truncated


def _check_text(value: Any, name: str, index: int, column: str, conversation_ok: bool) -> None:
    where = f"{name} row {index}, column {column!r}"
    if value is None:
        raise ValueError(f"{where} is None: give a string (drop the row or fill it in)")
    if isinstance(value, list):
        if not conversation_ok:
            raise ValueError(f"{where} is a list; give a string (join the pieces, or use one row per text)")
        if not value:
            raise ValueError(f"{where} is an empty conversation: give at least one {{'role', 'content'}} message")
        for turn, message in enumerate(value):
            if not isinstance(message, dict) or "role" not in message or not isinstance(message.get("content"), str):
                raise ValueError(f"{where}, message {turn} must be a dict with a 'role' and a string 'content'")
            _check_encodable(message["content"], f"{where}, message {turn}")
        return
    if not isinstance(value, str):
        raise ValueError(f"{where} is a {type(value).__name__}; give a string")
    _check_encodable(value, where)


def _check_encodable(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} holds a character UTF-8 cannot encode ({error.reason} at position {error.start}, e.g. a lone "
            "surrogate from a bad decode): clean the text"
        ) from None


def validate_example(example: dict, fmt: str, name: str, index: int) -> None:
    """Raise a ValueError naming the row and column when an example cannot be tokenised as ``fmt``."""
    if fmt == LANGUAGE_MODELING:
        _check_text(example["text"], name, index, "text", conversation_ok=False)
    elif fmt == CONVERSATIONAL:
        _check_text(example["messages"], name, index, "messages", conversation_ok=True)
        if not isinstance(example["messages"], list) or example["messages"][-1].get("role") != "assistant":
            raise ValueError(f"{name} row {index}: the 'messages' conversation must end with an assistant turn")
    else:
        answers = ("completion",) if fmt == PROMPT_COMPLETION else ("chosen", "rejected")
        for column in ("prompt", *answers):
            _check_text(example[column], name, index, column, conversation_ok=True)
        for column in answers:
            if isinstance(example["prompt"], list) != isinstance(example[column], list):
                raise ValueError(
                    f"{name} row {index}: 'prompt' and {column!r} must both be strings or both be lists of "
                    "messages (a chat prompt needs a completion like [{'role': 'assistant', 'content': ...}])"
                )


def has_content(example: dict, fmt: str) -> bool:
    """Whether an example has text to score: an empty text, completion or last assistant turn has none (its
    tokens would be only template tokens such as the end-of-turn marker)."""
    def content(value: Any) -> str:
        return " ".join(m["content"] for m in value) if isinstance(value, list) else value

    if fmt == LANGUAGE_MODELING:
        return bool(example["text"].strip())
    if fmt == CONVERSATIONAL:
        return bool(example["messages"][-1]["content"].strip())
    if fmt == PROMPT_COMPLETION:
        return bool(content(example["completion"]).strip())
    return bool(content(example["chosen"]).strip()) and bool(content(example["rejected"]).strip())


def eos_to_append(tokenizer, fmt: str, append_eos: bool | None, conversational: bool = False) -> int | None:
    """The EOS id to append to each completion of ``fmt`` data, or ``None``. ``append_eos=None``: on for plain-string
    prompt-completion and preference data (as open-unlearning), off for text and conversations (``conversational``:
    the completions are chat messages, whose template closes the turn itself)."""
    if append_eos is None:
        append_eos = fmt in (PROMPT_COMPLETION, PREFERENCE) and not conversational
        if tokenizer.eos_token_id is None:
            return None
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token: set tokenizer.eos_token or append_eos")
    return tokenizer.eos_token_id if append_eos else None


def tokenize_example(
    example: dict, tokenizer, fmt: str, max_length: int | None, eos_id: int | None = None
) -> tuple[dict, bool]:
    """Tokenise one example (``eos_id``: appended to each completion); returns the new columns and whether anything
    was truncated."""
    if fmt == LANGUAGE_MODELING:
        ids = tokenizer(example["text"])["input_ids"]
        return _encode([], list(ids), max_length, eos_id=eos_id)
    if fmt == CONVERSATIONAL:
        messages = example["messages"]
        if not _is_conversation(messages) or messages[-1].get("role") != "assistant":
            raise ValueError(
                "each 'messages' conversation must be a list of {'role','content'} ending with an assistant turn"
            )
        return _encode(*tokenize_pair(tokenizer, messages[:-1], messages[-1:]), max_length, eos_id=eos_id)
    if fmt == PROMPT_COMPLETION:
        return _encode(*tokenize_pair(tokenizer, example["prompt"], example["completion"]), max_length, eos_id=eos_id)
    if fmt == PREFERENCE:
        chosen, t1 = _encode(
            *tokenize_pair(tokenizer, example["prompt"], example["chosen"]), max_length, "chosen_", eos_id
        )
        rejected, t2 = _encode(
            *tokenize_pair(tokenizer, example["prompt"], example["rejected"]), max_length, "rejected_", eos_id
        )
        return {**chosen, **rejected}, t1 or t2
    raise ValueError(f"unknown dataset format {fmt!r}")


def prepare_dataset(
    data: Any,
    tokenizer,
    name: str,
    max_length: int | None,
    preference: bool = False,
    num_proc: int | None = None,
    append_eos: bool | None = None,
) -> Dataset:
    """Validate and tokenise ``data``; adds ``example_index`` (the row number, used for retain pairing).

    Sequences longer than ``max_length`` are truncated, with one warning that says how many. ``append_eos``: see
    :func:`eos_to_append` (``None``: EOS after each prompt-completion / preference completion, scored).
    Idempotent: an already tokenised dataset (with ``input_ids`` or ``chosen_input_ids``) is returned as is.
    """
    dataset = to_dataset(data, name)
    if "input_ids" in dataset.column_names or "chosen_input_ids" in dataset.column_names:
        return _check_tokenized(dataset, name)
    fmt = detect_format(dataset.column_names, name, preference=preference)
    for index, example in enumerate(dataset):
        validate_example(example, fmt, name, index)
    keep = [index for index, example in enumerate(dataset) if has_content(example, fmt)]
    if not keep:
        raise ValueError(f"every example of {name} is empty (no text, completion or assistant content to score)")
    if len(keep) < len(dataset):
        warnings.warn(
            f"dropped {len(dataset) - len(keep)} of {len(dataset)} examples of {name} that have nothing to score "
            "(empty text, completion or last assistant turn)",
            stacklevel=3,
        )
        dataset = dataset.select(keep)

    conversational = fmt in (PROMPT_COMPLETION, PREFERENCE) and _is_conversation(dataset[0]["prompt"])
    eos_id = eos_to_append(tokenizer, fmt, append_eos, conversational)

    def _map(example, index):
        out, truncated = tokenize_example(example, tokenizer, fmt, max_length, eos_id)
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
    return _drop_unscored(dataset, name, f"the completions are empty after tokenisation or max_length={max_length} "
                                        "cut them off")


def _check_tokenized(dataset: Dataset, name: str) -> Dataset:
    """The checks text data gets, for a dataset that arrives tokenised."""
    prefixes = ("chosen_", "rejected_") if "chosen_input_ids" in dataset.column_names else ("",)
    for prefix in prefixes:
        for column in (f"{prefix}input_ids", f"{prefix}labels"):
            if column not in dataset.column_names:
                raise ValueError(
                    f"{name} is tokenised but has no {column!r} column; add it (labels = input_ids with -100 "
                    "at positions not to score) or pass the text instead"
                )
        for index, (ids, labels) in enumerate(zip(dataset[f"{prefix}input_ids"], dataset[f"{prefix}labels"])):
            if len(ids) != len(labels):
                raise ValueError(
                    f"{name} row {index}: {prefix}input_ids has {len(ids)} tokens but {prefix}labels has "
                    f"{len(labels)}; they must align"
                )
    if "attention_mask" not in dataset.column_names and "input_ids" in dataset.column_names:
        dataset = dataset.add_column("attention_mask", [[1] * len(ids) for ids in dataset["input_ids"]])
    if INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    return _drop_unscored(dataset, name, "every label is -100")


def _drop_unscored(dataset: Dataset, name: str, why: str) -> Dataset:
    # A row whose labels are all -100 (the first position never predicts anything) contributes a 0/0 loss; a
    # batch of such rows crashes inside the model, possibly hours into a run.
    columns = [c for c in ("labels", "chosen_labels", "rejected_labels") if c in dataset.column_names]
    labels = [dataset[c] for c in columns]
    keep = [
        index for index in range(len(dataset)) if all(any(x != IGNORE_INDEX for x in ls[index][1:]) for ls in labels)
    ]
    if not keep:
        raise ValueError(f"no example of {name} has a token to score: {why}")
    if len(keep) < len(dataset):
        warnings.warn(
            f"dropped {len(dataset) - len(keep)} of {len(dataset)} examples of {name} with no token to score ({why})",
            stacklevel=4,
        )
        dataset = dataset.select(keep)
        dataset = dataset.remove_columns(INDEX_COLUMN).add_column(INDEX_COLUMN, list(range(len(dataset))))
    return dataset


def padding_id(tokenizer) -> int:
    """The id to pad with: the pad token, else EOS (padded positions are masked, so any real token serves)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token")
    return int(pad)


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
