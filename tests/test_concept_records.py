"""ConceptVectors JSON loader/saver (records.py): real files, id variants, type coercion, atomic round trip."""

from __future__ import annotations

import json

import pytest

from hf_unlearn.concepts import ConceptVector, load_concept_vectors, save_concept_vectors


def record(**overrides):
    base = {
        "Concept": "Harry Potter",
        "Layer": 20,
        "Dim": 10513,
        "QA": [" Who wrote Harry Potter?\n"],
        "text_completion": [{"First_half": "Harry Potter is a series", "Second_half": "of novels"}],
        "unrelated_QA": [" What is the capital of France?\n"],
        "wikipedia_content": "Harry Potter is a series of seven fantasy novels.",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def write(tmp_path, data, name="concepts.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_real_dev_file_parses(shared_dir):
    vectors = load_concept_vectors(shared_dir / "data" / "conceptvectors" / "llama2-7b_concepts_dev.json")
    assert len(vectors) == 10
    assert (vectors[0].concept, vectors[0].layer, vectors[0].dim) == ("Poland", 23, 743)
    assert [v.id for v in vectors].count(None) == 2 and vectors[1].id == 94
    for v in vectors:
        assert isinstance(v.layer, int) and isinstance(v.dim, int)
        assert v.questions and v.unrelated_questions and v.source_text
        assert all({"First_half", "Second_half"} <= set(c) for c in v.text_completions)


def test_real_answers_file_parses(shared_dir):
    path = shared_dir / "data" / "conceptvectors" / "llama2-7b_concepts_test_30tokens_answers.json"
    vectors = load_concept_vectors(path)
    assert len(vectors) == 10
    for v in vectors:
        assert len(v.qa_with_answers) == len(v.answers_tokens_num) == len(v.questions)
        assert all(isinstance(n, int) for n in v.answers_tokens_num)


def test_id_ID_or_missing(tmp_path):
    vectors = load_concept_vectors(write(tmp_path, [record(id=7), record(ID=26), record(), record(id="")]))
    assert [v.id for v in vectors] == [7, 26, None, None]


def test_string_integers_are_coerced(tmp_path):
    [v] = load_concept_vectors(write(tmp_path, [record(Layer="20", Dim="10513", ID="26")]))
    assert (v.layer, v.dim, v.id) == (20, 10513, 26)
    assert all(type(x) is int for x in (v.layer, v.dim, v.id))
    with pytest.raises(ValueError, match=r"record 1 \('Harry Potter'\).*integers"):
        load_concept_vectors(write(tmp_path, [record(), record(Layer="twenty")]))


def test_round_trip(tmp_path):
    original = load_concept_vectors(write(tmp_path, [record(id=3), record(Concept="Netflix", Layer=19, Dim=4820)]))
    original[0].scores = {"target_bleu": 0.5}
    original[1].answers = ["an answer"]
    out = tmp_path / "nested" / "saved.json"
    save_concept_vectors(original, out)
    again = load_concept_vectors(out)
    assert again == original
    assert json.loads(out.read_text())[0]["Concept"] == "Harry Potter"
    assert "id" not in json.loads(out.read_text())[1]  # unset optional fields are not written


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "saved.json"
    vectors = [ConceptVector("Harry Potter", 20, 10513)]
    save_concept_vectors(vectors, out)
    assert [p.name for p in tmp_path.iterdir()] == ["saved.json"]
    before = out.read_text()
    broken = [ConceptVector("Netflix", 19, 4820, scores={"x": object()})]  # json.dump fails half-way
    with pytest.raises(TypeError):
        save_concept_vectors(broken, out)
    assert out.read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["saved.json"]


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="JSON list"):
        load_concept_vectors(write(tmp_path, {"Concept": "Harry Potter"}))
    with pytest.raises(ValueError, match=r"record 1 lacks \['Layer'\]"):
        load_concept_vectors(write(tmp_path, [record(), {k: v for k, v in record().items() if k != "Layer"}]))
    with pytest.raises(FileNotFoundError):
        load_concept_vectors(tmp_path / "missing.json")
