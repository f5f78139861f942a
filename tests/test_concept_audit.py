"""Parametric audit: identity, single-column changes, GPT-2 layout, own-unembedding projection, PEFT, JSON."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_gpt2, tiny_llama

from hf_unlearn.architectures import value_vectors_view
from hf_unlearn.concepts import ConceptVector, project_to_vocab, value_vector
from hf_unlearn.concepts.audit import ENGLISH_STOPWORDS, AuditTable, _article_token_ids, audit_concept_vectors

ARTICLE = "harry potter is a wizard boy who studied at hogwarts castle . the school of the wizard is hogwarts ."


def hp(layer=1, dim=3, text=ARTICLE):
    return ConceptVector("Harry Potter", layer, dim, source_text=text, id=26)


@pytest.mark.parametrize("copy_model", [False, True])
def test_audit_against_itself_is_the_identity(tokenizer, llama, copy_model):
    other = copy.deepcopy(llama) if copy_model else llama
    table = audit_concept_vectors(llama, other, [hp(1, 3), (0, 5)], top_k=20, tokenizer=tokenizer, layers="all")
    for row in table.vectors:
        assert row["cosine_similarity"] == 1.0 and row["norm_distance"] == 0.0 and row["jaccard_similarity"] == 1.0
    assert table.vectors[0]["preciser_jaccard_similarity"] in (1.0, None)
    assert table.vectors[1]["preciser_jaccard_similarity"] is None  # a bare location has no article
    assert [r["layer"] for r in table.layers] == [0, 1]
    assert all(r["relative_change"] == 0.0 and r["changed_vectors"] == 0 for r in table.layers)


def test_changing_one_column_changes_only_that_vector(tokenizer, llama):
    unlearned = copy.deepcopy(llama)
    with torch.no_grad():
        unlearned.model.layers[1].mlp.down_proj.weight[:, 3] += torch.linspace(-0.5, 0.5, 32)
    table = audit_concept_vectors(llama, unlearned, [(1, 3), (1, 4), (0, 3)], top_k=10, layers="all")
    changed, same_layer, other_layer = table.vectors
    v0, v1 = value_vector(llama, 1, 3).double(), value_vector(unlearned, 1, 3).double()
    assert changed["cosine_similarity"] == pytest.approx((v0 @ v1 / (v0.norm() * v1.norm())).item(), abs=1e-9)
    assert changed["cosine_similarity"] < 1.0
    assert changed["norm_distance"] == pytest.approx((v0 - v1).norm().item(), rel=1e-6)
    assert same_layer["cosine_similarity"] == 1.0 and other_layer["cosine_similarity"] == 1.0
    layer0, layer1 = table.layers
    w0 = llama.model.layers[1].mlp.down_proj.weight.double()
    w1 = unlearned.model.layers[1].mlp.down_proj.weight.double()
    assert layer1["relative_change"] == pytest.approx(((w1 - w0).norm() / w0.norm()).item(), rel=1e-5)
    assert layer1["changed_vectors"] == 1 and layer1["audited_dims"] == [3, 4]
    assert layer0["relative_change"] == 0.0 and layer0["total_vectors"] == 64
    # top-k of each side equals project_to_vocab on that model (independent code path)
    t0 = set(project_to_vocab(llama, value_vector(llama, 1, 3), top_k=10)[0].tolist())
    t1 = set(project_to_vocab(unlearned, value_vector(unlearned, 1, 3), top_k=10)[0].tolist())
    assert changed["jaccard_similarity"] == pytest.approx(len(t0 & t1) / len(t0 | t1))


def test_gpt2_rows_are_value_vectors(tokenizer):
    original = tiny_gpt2(tokenizer)
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        unlearned.transformer.h[0].mlp.c_proj.weight[7, :] *= -1  # Conv1D (d_ff, d_model): row 7 = vector 7
    table = audit_concept_vectors(original, unlearned, [(0, 7), (0, 8)], top_k=10)
    flipped, untouched = table.vectors
    assert flipped["cosine_similarity"] == pytest.approx(-1.0)
    assert flipped["norm_distance"] == pytest.approx(2 * value_vector(original, 0, 7).norm().item(), rel=1e-6)
    assert untouched["cosine_similarity"] == 1.0
    assert table.layers[0]["changed_vectors"] == 1 and table.layers[0]["total_vectors"] == 128


def test_unlearned_top_tokens_use_the_unlearned_unembedding(tokenizer, llama):
    unlearned = copy.deepcopy(llama)
    with torch.no_grad():  # permute the LM head rows: vectors unchanged, projections different
        unlearned.lm_head.weight.copy_(unlearned.lm_head.weight.roll(7, dims=0))
    row = audit_concept_vectors(llama, unlearned, (1, 3), top_k=10).vectors[0]
    assert row["cosine_similarity"] == 1.0 and row["norm_distance"] == 0.0
    t0 = set(project_to_vocab(llama, value_vector(llama, 1, 3), top_k=10)[0].tolist())
    t1 = {(i + 7) % len(tokenizer) for i in t0}
    assert row["jaccard_similarity"] == pytest.approx(len(t0 & t1) / len(t0 | t1))
    assert row["jaccard_similarity"] < 1.0


def test_article_tokens_drop_stopwords_markers_and_specials(tokenizer):
    ids = _article_token_ids(tokenizer, "the wizard of hogwarts is </s> harry", ENGLISH_STOPWORDS)
    assert sorted(tokenizer.convert_ids_to_tokens(sorted(ids))) == ["harry", "hogwarts", "wizard"]

    class Marked:  # a SentencePiece-style tokenizer: "▁the" must count as the stopword "the"
        all_special_ids = []
        pieces = {0: "\u2581the", 1: "\u2581Wizard", 2: "\u0120of", 3: "\u2581"}

        def __call__(self, text, **kwargs):
            return {"input_ids": [0, 1, 2, 3]}

        def convert_ids_to_tokens(self, i):
            return self.pieces[i]

    assert _article_token_ids(Marked(), "whatever", ENGLISH_STOPWORDS) == {1}


def test_related_tokens_rate_and_preciser_jaccard_by_hand(tokenizer, llama):
    unlearned = copy.deepcopy(llama)
    with torch.no_grad():
        value_vectors_view(unlearned, 1)[:, 3] *= -1
    k = 25
    row = audit_concept_vectors(llama, unlearned, hp(1, 3), top_k=k, tokenizer=tokenizer, show_tokens=5).vectors[0]
    article = _article_token_ids(tokenizer, ARTICLE, ENGLISH_STOPWORDS)
    t0 = project_to_vocab(llama, value_vector(llama, 1, 3), top_k=k)[0].tolist()
    t1 = project_to_vocab(unlearned, value_vector(unlearned, 1, 3), top_k=k)[0].tolist()
    related0 = [t for t in t0 if t in article]
    assert related0, "pick k so that the original top tokens meet the article"
    assert row["preciser_jaccard_similarity"] == pytest.approx(len([t for t in t1 if t in article]) / len(related0))
    assert row["related_tokens_rate"] == pytest.approx(len(set(related0) & set(t1)) / len(related0))
    assert row["top_tokens_original"] == tokenizer.convert_ids_to_tokens(t0[:5])
    assert row["concept"] == "Harry Potter" and row["id"] == 26


def test_json_round_trip_dataframe_and_rendering(tokenizer, llama, tmp_path):
    unlearned = copy.deepcopy(llama)
    with torch.no_grad():
        unlearned.model.layers[0].mlp.down_proj.weight[:, 2] = 0  # a zeroed vector: cosine defined as 0
    table = audit_concept_vectors(llama, unlearned, [hp(0, 2), hp(1, 3)], top_k=15, tokenizer=tokenizer)
    assert table.vectors[0]["cosine_similarity"] == 0.0
    path = table.to_json(tmp_path / "out" / "audit.json")
    assert [p.name for p in path.parent.iterdir()] == ["audit.json"]  # no temporary file left behind
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(table.to_dict()))
    again = AuditTable.from_json(path)
    assert again.to_dict() == table.to_dict()
    frame = table.to_dataframe()
    assert list(frame["dim"]) == [2, 3] and len(table.to_dataframe("layers")) == 2
    markdown = table.to_markdown()
    assert markdown.splitlines()[0].startswith("| concept | layer | dim | cosine_similarity")
    assert "Harry Potter" in markdown and "AuditTable: 2 vector(s)" in str(table)
    summary = table.summary()
    assert summary["mean_cosine_similarity"] == pytest.approx((0.0 + 1.0) / 2)
    assert math.isclose(summary["max_relative_change"], table.layers[0]["relative_change"])


def test_failed_json_write_leaves_no_partial_file(tmp_path, tokenizer, llama):
    table = audit_concept_vectors(llama, llama, (0, 1), top_k=5)
    table.meta["bad"] = float("nan")  # strict JSON refuses it
    with pytest.raises(ValueError):
        table.to_json(tmp_path / "audit.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_peft_lora_is_audited_like_the_merged_model(tokenizer, kind):
    build, target = (tiny_llama, ["down_proj"]) if kind == "llama" else (tiny_gpt2, r".*mlp\.c_proj")
    original = build(tokenizer)
    config = LoraConfig(r=2, target_modules=target, init_lora_weights=False, fan_in_fan_out=kind == "gpt2")
    peft_model = get_peft_model(copy.deepcopy(original), config)
    refs = [(0, 1), (1, 2)]
    unmerged = audit_concept_vectors(original, peft_model, refs, top_k=10)
    assert unmerged.vectors[0]["cosine_similarity"] < 1.0
    merged = audit_concept_vectors(original, copy.deepcopy(peft_model).merge_and_unload(), refs, top_k=10)
    for a, b in zip(unmerged.vectors + unmerged.layers, merged.vectors + merged.layers):
        for key, value in a.items():
            assert b[key] == (pytest.approx(value, rel=1e-5, abs=1e-7) if isinstance(value, float) else value), key
    # get_peft_model injects the adapters into the base model in place: auditing that base against its PEFT wrapper
    # must still compare the adapter-free weights with the adapted ones.
    base = build(tokenizer)
    wrapped = get_peft_model(base, config)
    in_place = audit_concept_vectors(base, wrapped, refs, top_k=10)
    assert in_place.meta["same_model_object"] and in_place.vectors[0]["cosine_similarity"] < 1.0
    assert in_place.layers[0]["relative_change"] > 0


def test_dora_asks_for_merge(tokenizer, llama):
    peft_model = get_peft_model(copy.deepcopy(llama), LoraConfig(r=2, target_modules=["down_proj"], use_dora=True))
    with pytest.raises(ValueError, match="merge_and_unload"):
        audit_concept_vectors(llama, peft_model, (0, 1))


def test_incompatible_models_fail_clearly(tokenizer, llama):
    with pytest.raises(ValueError, match="different architectures"):
        audit_concept_vectors(llama, tiny_gpt2(tokenizer), (0, 1))
    with pytest.raises(ValueError, match="different depths"):
        audit_concept_vectors(llama, tiny_llama(tokenizer, layers=3), (0, 1))
    with pytest.raises(ValueError, match="differ in shape"):
        audit_concept_vectors(llama, tiny_llama(tokenizer, hidden=16), (0, 1))
    with pytest.raises(IndexError, match="layer 5"):
        audit_concept_vectors(llama, llama, (5, 1))
    with pytest.raises(IndexError, match="dim 64"):
        audit_concept_vectors(llama, llama, (1, 64))
    with pytest.raises(ValueError, match="layers="):
        audit_concept_vectors(llama, llama, (1, 1), layers="some")


def test_same_object_with_merged_adapters_is_refused(tokenizer):
    base = tiny_llama(tokenizer)
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["down_proj"], init_lora_weights=False))
    wrapped.merge_adapter()  # the base weights now include the adapter: the original is gone
    with pytest.raises(ValueError, match="separate copy"):
        audit_concept_vectors(base, wrapped, (0, 1))


def test_dtype_mismatch_warns(tokenizer, llama):
    with pytest.warns(UserWarning, match="one dtype"):
        table = audit_concept_vectors(llama, copy.deepcopy(llama).to(torch.bfloat16), (0, 1), top_k=5)
    assert table.meta["dtypes"] == ["torch.float32", "torch.bfloat16"]
    assert table.layers[0]["changed_vectors"] > 1
