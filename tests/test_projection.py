"""Value vectors and their vocabulary projection on tiny models (Llama and GPT-2 orientation)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama

from hf_unlearn.architectures import unembedding, value_vectors_view
from hf_unlearn.concepts import project_to_vocab, scan_value_vectors, value_vector


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_scan_matches_projecting_each_vector(tokenizer, build):
    model = build(tokenizer, layers=2)
    chunks = list(scan_value_vectors(model, layers=[1], top_k=5, chunk_size=24))
    d_ff = value_vectors_view(model, 1).shape[1]
    assert [len(c.dims) for c in chunks] == [24] * (d_ff // 24) + ([d_ff % 24] if d_ff % 24 else [])
    assert torch.cat([c.dims for c in chunks]).tolist() == list(range(d_ff))
    for chunk in chunks:
        for row, dim in enumerate(chunk.dims.tolist()):
            ids, scores = project_to_vocab(model, value_vector(model, 1, dim), top_k=5)
            assert chunk.top_ids[row].tolist() == ids.tolist()
            torch.testing.assert_close(chunk.top_scores[row], scores)


def test_value_vector_orientation_and_projection_by_hand(tokenizer):
    gpt2 = tiny_gpt2(tokenizer, layers=1)
    assert torch.equal(value_vector(gpt2, 0, 3), gpt2.transformer.h[0].mlp.c_proj.weight[3])  # Conv1D: a row
    llama = tiny_llama(tokenizer, layers=1)
    v = value_vector(llama, 0, 3)
    assert torch.equal(v, llama.model.layers[0].mlp.down_proj.weight[:, 3])  # Linear: a column
    logits = unembedding(llama).detach() @ v
    ids, scores = project_to_vocab(llama, v, top_k=3)
    assert ids.tolist() == logits.argsort(descending=True)[:3].tolist()


def test_score_fn_sees_one_vocab_by_chunk_block(tokenizer):
    model = tiny_llama(tokenizer, layers=1)
    shapes = []

    def score(block):
        shapes.append(tuple(block.shape))
        return block.max(0).values

    chunk = next(iter(scan_value_vectors(model, top_k=1, chunk_size=16, score_fn=score)))
    assert shapes[0] == (len(tokenizer), 16)
    torch.testing.assert_close(chunk.extra, chunk.top_scores[:, 0])


def test_final_norm_gain_and_bad_dims(tokenizer):
    model = tiny_llama(tokenizer, layers=1)
    with torch.no_grad():
        model.model.norm.weight.fill_(2.0)
    v = value_vector(model, 0, 0)
    _, plain = project_to_vocab(model, v, top_k=3)
    _, gained = project_to_vocab(model, v, top_k=3, apply_final_norm=True)
    torch.testing.assert_close(gained, 2 * plain)
    with pytest.raises(IndexError, match="value vectors"):
        value_vector(model, 0, 10_000)
