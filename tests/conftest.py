"""Session set-up (offline Hub, one intra-op thread) and the shared fixtures; the builders are in tiny_models.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import SHARED, build_tokenizer, tiny_gpt2, tiny_llama, train_tiny  # noqa: E402

# Pinned once for the whole suite: tiny models on a shared 2-core machine run 10-40x faster on one intra-op thread
# than on oversubscribed ones, and the numerics of a test do not depend on which tests ran before it.
torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def llama(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def trained_tiny():
    """``trained_tiny(tokenizer, kind="llama", steps=80, layers=2)``: a fresh model with the weights of
    :func:`tiny_models.train_tiny`, trained once per session for each setting (every call gets its own copy)."""
    weights: dict = {}

    def make(tokenizer, kind: str = "llama", steps: int = 80, layers: int = 2):
        key = (kind, layers, steps)
        if key not in weights:
            trained = train_tiny(tokenizer, kind, steps, layers)
            weights[key] = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        model = (tiny_llama if kind == "llama" else tiny_gpt2)(tokenizer, layers=layers)
        model.load_state_dict(weights[key])
        return model

    return make


@pytest.fixture
def hub():
    """A :class:`fake_hub.FakeHub` serving every huggingface_hub call of the test; fails the test on any request
    it does not know."""
    import httpx2
    import huggingface_hub
    from fake_hub import FakeHub
    from huggingface_hub.utils._http import default_client_factory

    fake = FakeHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake.handler)))
    try:
        yield fake
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
    assert not fake.unexpected, fake.unexpected


@pytest.fixture
def shared_dir():
    if not SHARED.exists():
        pytest.skip("../shared is not present (only on the developers' machines)")
    return SHARED


