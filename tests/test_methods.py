"""The method registry, the general-knowledge pool and ``unlearn_concept`` on a tiny model."""

from __future__ import annotations

import copy
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402

import hf_unlearn as hu  # noqa: E402
from hf_unlearn.evaluation import answer_questions  # noqa: E402
from hf_unlearn.general_knowledge import GENERAL_KNOWLEDGE, concept_words, general_knowledge, mentions  # noqa: E402
from hf_unlearn.methods import CONCEPT_VECTORS, PREFERENCE  # noqa: E402
from hf_unlearn.trainers import UnlearningTrainer  # noqa: E402

QUESTIONS = ["who studied at hogwarts ?", "what school is the wizard school ?", "who is a wizard boy ?"]
RETAIN = ["the capital city of france is ?", "the river seine flows through ?", "what is the sky ?"]


def test_registry_holds_every_unlearning_trainer_under_its_own_name():
    expected = {"grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "undial", "wga", "satimp", "needle"}
    assert set(hu.METHODS) == expected
    exported = [getattr(hu, name) for name in hu.__all__]
    for name, spec in hu.METHODS.items():
        assert spec.name == name == spec.trainer_class.method_name
        assert spec.trainer_class.config_class is spec.config_class
        assert issubclass(spec.trainer_class, UnlearningTrainer)
        assert spec.trainer_class in exported and spec.config_class in exported
        assert (spec.data_format == PREFERENCE) == spec.trainer_class.preference


def test_reference_and_retain_come_from_the_trainers_own_rules():
    assert hu.get_method("npo").forget_uses_reference and hu.get_method("npo").uses_reference()
    assert not hu.get_method("simnpo").forget_uses_reference and not hu.get_method("simnpo").uses_reference()
    # RMU's forget term needs no reference, but its default embed_diff retain term does.
    rmu = hu.get_method("rmu")
    assert not rmu.forget_uses_reference and rmu.uses_reference() and rmu.default_retain_loss == "embed_diff"
    grad_diff = hu.get_method("grad_diff")
    assert not grad_diff.uses_reference()
    assert grad_diff.uses_reference(grad_diff.make_config(retain_loss="kl"))
    assert not hu.get_method("grad_ascent").uses_retain and hu.get_method("grad_diff").uses_retain
    assert hu.get_method("needle").data_format == CONCEPT_VECTORS
    for spec in hu.METHODS.values():
        assert spec.uses_retain == (spec.make_config().retain_loss != "none")
        assert json.dumps(spec.to_dict())


def test_get_method_normalises_names_and_lists_the_known_ones():
    assert hu.get_method("Grad-Diff") is hu.METHODS["grad_diff"]
    with pytest.raises(ValueError, match="unknown unlearning method 'dpo'.*npo.*needle"):
        hu.get_method("dpo")


def test_general_knowledge_pool_is_diverse_and_filters_the_concept():
    questions = [q for q, _ in GENERAL_KNOWLEDGE]
    assert len(questions) >= 55 and len(set(questions)) == len(questions)
    assert all(a.strip() for _, a in GENERAL_KNOWLEDGE)
    assert concept_words("Paris and France") == {"paris", "france"}
    moon = general_knowledge(exclude="The Moon")
    assert "Who was the first person to walk on the Moon?" not in [q for q, _ in moon]
    assert len(moon) == len(GENERAL_KNOWLEDGE) - 1
    capitals = general_knowledge(exclude="capital cities")
    assert capitals and not any(mentions(q, {"capital", "city"}) for q, _ in capitals)
    assert mentions("Rome was built", {"rome"}) and not mentions("chromosome", {"rome"})


@pytest.fixture
def model(tokenizer):
    return tiny_llama(tokenizer, hidden=32)


def test_unlearn_concept_returns_a_before_after_table(model, tokenizer, tmp_path):
    original = copy.deepcopy(model)
    result = hu.unlearn_concept(
        model, tokenizer, "Harry Potter", QUESTIONS, method="grad_diff", retain_questions=RETAIN, steps=3,
        learning_rate=5e-2, max_new_tokens=4, output_dir=str(tmp_path / "out"), use_cpu=True, progress=False,
    )
    assert result.model is model and result.method == "grad_diff"
    before = answer_questions(original, tokenizer, QUESTIONS, max_new_tokens=4)
    assert [r["before"] for r in result.forget] == before
    assert [r["after"] for r in result.forget] == answer_questions(model, tokenizer, QUESTIONS, max_new_tokens=4)
    assert [r["question"] for r in result.retain] == RETAIN
    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), original.parameters())]
    assert any(changed)
    for metrics in (result.metrics_before, result.metrics_after):
        assert metrics.get("answer_log_prob", "forget") is not None
        assert metrics.get("answer_log_prob", "retain") is not None
    # Before training the answers are the model's own greedy ones: ROUGE recall 1 by construction.
    assert result.metrics_before.get("rouge_l_recall", "forget") == pytest.approx(1.0)
    assert result.metrics_after.get("answer_log_prob", "forget") < result.metrics_before.get("answer_log_prob",
                                                                                             "forget")
    assert result.config["steps"] == 3 and result.config["learning_rate"] == 5e-2
    assert any("forget_loss" in entry for entry in result.log_history)
    text = result.to_markdown()
    assert "| question | before | after |" in text and "| metric | split | before | after |" in text
    data = json.loads(result.to_json(tmp_path / "result.json").read_text())
    assert data["forget"][0]["question"] == QUESTIONS[0] and "before" in data["metrics"]
    assert (tmp_path / "out" / "config.json").exists()


def test_unlearn_concept_default_retain_pool_is_filtered_off_the_concept(model, tokenizer):
    result = hu.unlearn_concept(model, tokenizer, "capital city", QUESTIONS, method="simnpo", steps=1,
                                max_new_tokens=2, use_cpu=True, progress=False)
    retained = [r["question"] for r in result.retain]
    assert len(retained) >= 50
    assert not any(mentions(q, {"capital", "city"}) for q in retained)


def test_unlearn_concept_preference_and_needle_paths(model, tokenizer):
    result = hu.unlearn_concept(copy.deepcopy(model), tokenizer, "Harry Potter", QUESTIONS, method="idk_dpo",
                                retain_questions=RETAIN, steps=1, max_new_tokens=3, use_cpu=True, progress=False)
    assert result.method == "idk_dpo" and any("rewards_margin" in e or "forget_loss" in e for e in result.log_history)
    needle = hu.unlearn_concept(model, tokenizer, "Harry Potter", QUESTIONS, method="needle",
                                retain_questions=RETAIN, steps=1, max_new_tokens=3, num_concept_vectors=2,
                                use_cpu=True, progress=False)
    assert needle.concept_vectors is not None and len(needle.concept_vectors) == 2


def test_unlearn_concept_rejects_bad_input(model, tokenizer):
    with pytest.raises(ValueError, match="questions is empty"):
        hu.unlearn_concept(model, tokenizer, "X", [" "], progress=False)
    with pytest.raises(ValueError, match="unknown unlearning method"):
        hu.unlearn_concept(model, tokenizer, "X", QUESTIONS, method="forget_it", progress=False)
