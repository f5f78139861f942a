"""Session set-up (offline Hub, one intra-op thread) and the shared fixtures; the builders are in tiny_models.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import SHARED, build_tokenizer, tiny_llama  # noqa: E402

# Pinned once for the whole suite: tiny models on a shared 2-core machine run 10-40x faster on one intra-op thread
# than on oversubscribed ones, and the numerics of a test do not depend on which tests ran before it.
torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def llama(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture
def shared_dir():
    if not SHARED.exists():
        pytest.skip("../shared is not present (only on the developers' machines)")
    return SHARED


