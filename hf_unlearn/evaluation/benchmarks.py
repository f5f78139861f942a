"""Loaders for the public unlearning benchmarks (TOFU, MUSE), from the Hugging Face Hub.

They need the Hub once (``datasets`` caches what it downloads); on a machine without network access they fail with a
message that says what to do, instead of a connection error from deep inside ``datasets``.
"""

from __future__ import annotations

from typing import Any

TOFU_REPO = "locuslab/TOFU"
MUSE_REPOS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
TOFU_CONFIGS = (
    "forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "forget01_perturbed",
    "forget05_perturbed", "forget10_perturbed", "retain_perturbed", "real_authors", "real_authors_perturbed",
    "world_facts", "world_facts_perturbed", "holdout01", "holdout05", "holdout10",
)


def _load(repo: str, config: str | None, split: str, **kwargs: Any):
    from datasets import load_dataset

    try:
        return load_dataset(repo, config, split=split, **kwargs)
    except (ConnectionError, OSError, ValueError) as error:
        import huggingface_hub

        where = "HF_HUB_OFFLINE=1 is set" if huggingface_hub.constants.HF_HUB_OFFLINE else "the Hub is unreachable"
        raise ConnectionError(
            f"could not load {repo!r} ({config or 'default'}, split {split!r}): {where} and it is not in the local "
            "datasets cache. Run this once on a machine with network access (the cache then serves it offline), or "
            "pass your own data to the metric functions as lists of questions and answers."
        ) from error


def load_tofu(config: str = "forget10", split: str = "train", **kwargs: Any):
    """A TOFU split (Maini et al. 2024): ``forget10``, ``retain90``, ``forget10_perturbed`` (with
    ``paraphrased_answer`` and ``perturbed_answer`` for the truth ratio), ``real_authors``, ``world_facts``,
    ``holdout10``, ...

    Example:
        >>> forget = load_tofu("forget10_perturbed")
        >>> truth_ratio(model, tokenizer, forget["question"], forget["paraphrased_answer"],
        ...             forget["perturbed_answer"], split="forget")
    """
    if config not in TOFU_CONFIGS:
        raise ValueError(f"TOFU has no config {config!r}; choose one of {list(TOFU_CONFIGS)}")
    return _load(TOFU_REPO, config, split, **kwargs)


def load_muse(corpus: str = "news", subset: str = "knowmem", split: str = "forget_qa", **kwargs: Any):
    """A MUSE split (Shi et al. 2024): corpus ``"news"`` or ``"books"``; subsets ``raw``, ``verbmem``, ``knowmem``,
    ``privleak`` with their splits (``forget``, ``forget_qa``, ``retain_qa``, ``holdout``, ...).

    Example:
        >>> qa = load_muse("news", "knowmem", "forget_qa")
    """
    if corpus.lower() not in MUSE_REPOS:
        raise ValueError(f"MUSE has corpora {sorted(MUSE_REPOS)}, not {corpus!r}")
    return _load(MUSE_REPOS[corpus.lower()], subset, split, **kwargs)
