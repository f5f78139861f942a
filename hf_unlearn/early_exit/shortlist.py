"""Token shortlists for cheap exit screening."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def token_shortlist(tokenizer, texts: Iterable[str], size: int) -> list[int]:
    """The ``size`` most frequent token ids of ``texts`` (special tokens always included), for
    [`EarlyExitForCausalLM.set_exit_shortlist`].

    Text the model itself generates is a good source: the shortlist should cover what the model tends to predict.
    When ``texts`` hold fewer distinct tokens than ``size``, the rest are the lowest ids not yet in the list (a BPE
    vocabulary numbers its merges roughly from the most to the least frequent).

    Example:
        >>> ids = token_shortlist(tokenizer, corpus, size=4096)
        >>> model.set_exit_shortlist(ids)
    """
    if size < 1:
        raise ValueError(f"size must be >= 1 (got {size})")
    counts: Counter[int] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"texts must be strings, got {type(text).__name__}")
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    special = [i for i in tokenizer.all_special_ids if i is not None]
    ranked = special + [token for token, _ in counts.most_common() if token not in special]
    chosen = set(ranked[:size])
    for token in range(len(tokenizer)):
        if len(chosen) >= size:
            break
        chosen.add(token)
    return sorted(chosen)
