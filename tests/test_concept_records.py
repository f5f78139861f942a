"""ConceptVectors JSON loader/saver (records.py): real files, id variants, type coercion, atomic round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hf_unlearn.concepts import ConceptVector, load_concept_vectors, save_concept_vectors
from hf_unlearn.concepts.records import as_vector_refs


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
    with pytest.raises(ValueError, match=r"record 1 \('Harry Potter'\): 'Layer' must be a non-negative integer"):
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


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"Layer": 1.9}, r"'Layer' must be a non-negative integer .* got 1.9"),
        ({"Layer": True}, r"'Layer' must be a non-negative integer .* got True"),
        ({"Dim": "\u0661\u0662"}, r"'Dim' must be a non-negative integer"),  # Arabic-Indic digits
        ({"Layer": -1}, r"'Layer' must be a non-negative integer .* got -1"),
        ({"Dim": 10**30}, r"'Dim' must be a non-negative integer"),
        ({"QA": "who is harry?"}, r"'QA' must be a list, got a str"),
        ({"QA": ["who?", 3]}, r"QA\[1\] must be a string"),
        ({"Concept": 123}, r"'Concept' must be a non-empty string"),
        ({"text_completion": [{"prompt": 1}]}, r"text_completion\[0\] must be an object of strings"),
        ({"wikipedia_content": ["a"]}, r"'wikipedia_content' must be a string"),
        ({"scores": {"bleu": "high"}}, r"scores\['bleu'\] must be a number"),
    ],
)
def test_every_field_is_checked_with_the_record_and_field_named(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        load_concept_vectors(write(tmp_path, [record(), record(**changes)]))


def test_a_record_that_is_not_an_object_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"record 1 is a list"):
        load_concept_vectors(write(tmp_path, [record(), [1, 2]]))


def test_a_missing_local_file_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("looked up on the Hub"))
    for missing in (tmp_path / "concepts.json", tmp_path / "sub" / "concepts", "data/concepts/dev",
                    "concepts_dev.json"):
        with pytest.raises(FileNotFoundError, match="no concept-vector file"):
            load_concept_vectors(missing)


def test_negative_locations_are_refused_everywhere():
    from hf_unlearn.concepts import ConceptVector

    with pytest.raises(ValueError, match="non-negative"):
        ConceptVector("Harry Potter", layer=-1, dim=3)
    with pytest.raises(ValueError, match="no negative indices"):
        as_vector_refs([(1, 2), (-1, 3)])


def test_negative_layers_are_refused_by_ablation_and_the_value_vector_view(tokenizer):
    from tiny_models import tiny_llama

    from hf_unlearn.architectures import value_vectors_view
    from hf_unlearn.concepts import ablate_concept_vectors

    model = tiny_llama(tokenizer)
    with pytest.raises(ValueError, match="no negative indices"), ablate_concept_vectors(model, (-1, 0)):
        pass
    with pytest.raises(IndexError, match="layer -1 out of range"):
        value_vectors_view(model, -1)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={key: JSON_VALUES for key in ("Concept", "Layer", "Dim", "QA", "text_completion", "unrelated_QA",
                                           "wikipedia_content", "id", "answers", "answers_tokens_num", "scores")},
)


@settings(
    derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.lists(RECORDS | JSON_VALUES, max_size=3) | JSON_VALUES)
@example(data=[{"Concept": "x", "Layer": 2**63, "Dim": 1}])
def test_any_json_gives_records_or_a_value_error(tmp_path, data):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(data))
    try:
        vectors = load_concept_vectors(path)
    except ValueError:
        return
    for vector in vectors:
        assert isinstance(vector.concept, str) and vector.concept.strip()
        assert type(vector.layer) is int and vector.layer >= 0 and type(vector.dim) is int and vector.dim >= 0
        assert all(isinstance(q, str) for q in vector.questions)
