"""Answer generation, BLEU / ROUGE-L against hand computations, reversible ablation and causal validation."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama

from hf_unlearn.concepts import ConceptVector, ablate_concept_vectors
from hf_unlearn.concepts import validation as validation_module
from hf_unlearn.concepts.validation import ValidationResult, validate_concept_vectors
from hf_unlearn.evaluation.generation import answer_questions
from hf_unlearn.evaluation.overlap import UnicodeWordTokenizer, _bleu_builtin, bleu, rouge_l, text_overlap

TARGET = ["who is harry potter", "the wizard school of harry potter", "what is harry potter", "where is harry potter"]
UNRELATED = [
    "the capital city of france",
    "the river seine flows",
    "the capital city of germany",
    "the cat sat on",
    "the dog ran in",
    "the sky is blue and",
]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, saved):
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


# ---------------------------------------------------------------------------------------------------------------------
# BLEU / ROUGE-L
# ---------------------------------------------------------------------------------------------------------------------


def test_bleu_matches_hand_computation():
    # Unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3 -> method 3: 1/(2^1 * 3); equal lengths: BP = 1.
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert bleu("the cat sat on the mat", "the cat is on the mat") == pytest.approx(expected, abs=1e-12)
    assert _bleu_builtin("the cat sat on the mat".split(), "the cat is on the mat".split()) == pytest.approx(expected)


def test_bleu_is_order_dependent_and_brevity_penalised():
    # Short hypothesis: p = 1, 1, 1/2 (k=1, 1 trigram slot), 1/4 (k=2); BP = exp(1 - 6/2).
    short = math.exp(-2) * (1 * 1 * 0.5 * 0.25) ** 0.25
    assert bleu("the cat", "the cat sat on the mat") == pytest.approx(short, abs=1e-12)
    # Swapped: p = 2/6, 1/5, 1/(2*4), 1/(4*3); BP = 1.
    long = (2 / 6 * 1 / 5 * 1 / 8 * 1 / 12) ** 0.25
    assert bleu("the cat sat on the mat", "the cat") == pytest.approx(long, abs=1e-12)


def test_bleu_short_identical_and_empty_texts():
    assert bleu("a b c d e", "a b c d e") == pytest.approx(1.0)
    # Method 3 penalises identical texts shorter than 4 tokens (parity with the reference numbers).
    assert bleu("paris", "paris") == pytest.approx((1 * 0.5 * 0.25 * 0.125) ** 0.25)
    assert bleu("", "") == 1.0 and bleu("  \n", "") == 1.0
    assert bleu("", "some answer") == 0.0 and bleu("some answer", "") == 0.0
    assert bleu("x y z", "a b c") == 0.0  # no unigram match


def test_builtin_bleu_agrees_with_nltk():
    rng = random.Random(0)
    words = "a b c d e f the of".split()
    for _ in range(300):
        hyp = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        ref = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        assert bleu(hyp, ref, backend="builtin") == pytest.approx(bleu(hyp, ref, backend="nltk"), abs=1e-12)
    with pytest.raises(ValueError, match="backend"):
        bleu("a", "a", backend="sacrebleu")


def test_rouge_l_matches_lcs_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 -> P = R = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS 2: P = 2/2, R = 2/6 -> F = 2PR / (P + R) = 0.5; symmetric.
    assert rouge_l("the cat", "the cat sat on the mat") == pytest.approx(0.5)
    assert rouge_l("the cat sat on the mat", "the cat") == pytest.approx(0.5)
    assert rouge_l("Cats running.", "cat run") == pytest.approx(1.0)  # lower-cased, punctuation dropped, stemmed
    assert rouge_l("", "") == 1.0 and rouge_l("", "a b") == 0.0
    # rouge-score's tokenizer drops non-Latin text: identical texts still count as identical, different ones not.
    assert rouge_l("東京 大阪", "東京 大阪") == 1.0 and rouge_l("東京", "大阪") == 0.0
    german = UnicodeWordTokenizer()
    assert rouge_l("Wer schrieb die Bücher?", "wer schrieb die bücher", tokenizer=german) == pytest.approx(1.0)
    assert rouge_l("Bücher", "Bucher", tokenizer=german) == 0.0


def test_text_overlap_means_and_errors():
    scores = text_overlap(["a b c d", "", "the cat"], ["a b c d", "", "the cat sat on the mat"])
    assert scores["bleu_per_item"][:2] == [1.0, 1.0]
    assert scores["rouge_l_per_item"] == pytest.approx([1.0, 1.0, 0.5])
    assert scores["bleu"] == pytest.approx(sum(scores["bleu_per_item"]) / 3)
    assert scores["n"] == 3 and all(type(x) is float for x in scores["bleu_per_item"] + scores["rouge_l_per_item"])
    assert text_overlap([], [])["bleu"] is None
    with pytest.raises(ValueError, match="pair them"):
        text_overlap(["a"], ["a", "b"])


# ---------------------------------------------------------------------------------------------------------------------
# answer_questions
# ---------------------------------------------------------------------------------------------------------------------


def test_batched_answers_equal_single_answers_with_left_padding(tokenizer, llama):
    prompts = ["what is the capital city of france ?", "who is harry potter ?", "the cat sat"]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) == 3  # different lengths: padding matters
    assert tokenizer.padding_side == "right"  # the library must not rely on the default
    single = [answer_questions(llama, tokenizer, [p], max_new_tokens=8, prompt_template="{q}")[0] for p in prompts]
    batched = answer_questions(llama, tokenizer, prompts, max_new_tokens=8, prompt_template="{q}", batch_size=3)
    assert batched == single
    assert tokenizer.padding_side == "right"


def test_generate_sees_left_padding_and_prompt_is_not_decoded(tokenizer, llama, monkeypatch):
    seen = {}
    original_generate = llama.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return original_generate(**kwargs)

    monkeypatch.setattr(llama, "generate", spy)
    answers = answer_questions(llama, tokenizer, ["harry potter", "the cat sat on the mat"], max_new_tokens=3,
                               prompt_template="{q}")
    ids, mask = seen["input_ids"], seen["attention_mask"]
    assert mask[0, 0] == 0 and mask[:, -1].all()  # short prompt padded on the left
    assert ids[0, 0] == tokenizer.pad_token_id and seen["do_sample"] is False
    assert len(answers) == 2 and all(len(a.split()) <= 3 for a in answers)  # only the new tokens


def test_answer_questions_restores_state_and_falls_back_to_eos(tokenizer, llama):
    tokenizer.pad_token = None
    llama.train()
    llama.model.layers[0].eval()  # a deliberately mixed mode must survive too
    answers = answer_questions(llama, tokenizer, ["harry potter", "the cat sat on the mat"], max_new_tokens=4)
    assert len(answers) == 2
    assert tokenizer.pad_token is None and tokenizer.padding_side == "right"
    assert llama.training and not llama.model.layers[0].training and llama.model.layers[1].training


def test_answer_questions_chat_template_and_template_check(tokenizer, llama):
    chat = answer_questions(llama, tokenizer, ["who is harry potter"], max_new_tokens=4, chat=True,
                            system_prompt="answer the question")
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "answer the question"}, {"role": "user", "content": "Question: who is harry "
                                                                                          "potter\nAnswer:"}],
        tokenize=False, add_generation_prompt=True,
    )
    manual = answer_questions(llama, tokenizer, [rendered], max_new_tokens=4, prompt_template="{q}")
    assert chat == manual
    with pytest.raises(ValueError, match="{q}"):
        answer_questions(llama, tokenizer, ["x"], prompt_template="Question:")
    assert answer_questions(llama, tokenizer, []) == []


# ---------------------------------------------------------------------------------------------------------------------
# Reversible ablation (ablation.py)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("mode", ["noise", "zero", "mean"])
def test_ablation_changes_only_the_vectors_and_restores_bit_exactly(tokenizer, build, mode):
    from hf_unlearn.architectures import value_vectors_view

    model = build(tokenizer)
    saved = snapshot(model)
    before = {layer: value_vectors_view(model, layer).clone() for layer in (0, 1)}
    locations = [(0, 3), (1, 7), (1, 3), (1, 7)]  # a repeated location must still come back exactly
    with ablate_concept_vectors(model, locations, mode=mode, sigma=0.5, seed=1):
        for layer in (0, 1):
            view = value_vectors_view(model, layer)
            changed = (view != before[layer]).any(dim=0).nonzero().flatten().tolist()
            assert changed == sorted({d for where, d in locations if where == layer})
            if mode == "zero":
                assert all((view[:, d] == 0).all() for d in changed)
    assert_same_weights(model, saved)


def test_ablation_restores_on_exception_and_is_seeded(tokenizer, llama):
    saved = snapshot(llama)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_concept_vectors(llama, [(0, 1), (1, 2)], mode="noise", sigma=1.0, seed=3):
            raise RuntimeError("boom")
    assert_same_weights(llama, saved)
    from hf_unlearn.concepts import value_vector

    with ablate_concept_vectors(llama, (1, 2), seed=3):
        first = value_vector(llama, 1, 2)
    with ablate_concept_vectors(llama, (1, 2), seed=3):
        assert torch.equal(value_vector(llama, 1, 2), first)
    assert_same_weights(llama, saved)


# ---------------------------------------------------------------------------------------------------------------------
# validate_concept_vectors
# ---------------------------------------------------------------------------------------------------------------------


def plant_concept_vector(tokenizer, layer: int = 0, dim: int = 5):
    """A random tiny Llama plus one value vector that fires on the token 'potter' and writes 'hogwarts': ablating it
    must change the Harry Potter answers far more than the unrelated ones."""
    model = tiny_llama(tokenizer)
    mlp = model.model.layers[layer].mlp
    captured = {}
    hook = mlp.register_forward_hook(lambda module, inputs, output: captured.setdefault("x", inputs[0]))
    with torch.no_grad():
        model(**tokenizer("potter", return_tensors="pt", add_special_tokens=False))
        hook.remove()
        key = captured["x"][0, -1] / captured["x"][0, -1].norm()
        mlp.gate_proj.weight[dim] = key
        mlp.up_proj.weight[dim] = key
        mlp.down_proj.weight[:, dim] = 0.3 * model.lm_head.weight[tokenizer.convert_tokens_to_ids("hogwarts")]
    return model


def test_validation_separates_a_planted_concept_vector(tokenizer):
    model = plant_concept_vector(tokenizer)
    saved = snapshot(model)
    kwargs = dict(questions=TARGET, unrelated_questions=UNRELATED, mode="zero", max_new_tokens=8,
                  prompt_template="{q}")
    planted = validate_concept_vectors(model, tokenizer, (0, 5), **kwargs)
    control = validate_concept_vectors(model, tokenizer, (0, 6), **kwargs)
    assert planted.target_bleu < 0.2 and planted.target_rouge_l < 0.2
    assert planted.unrelated_bleu > planted.target_bleu + 0.4
    assert control.target_bleu > 0.5  # an arbitrary vector of the same layer does not do this
    assert all("hogwarts" in a for a in planted.target.clean_answers)
    assert not any("hogwarts" in a for a in planted.target.ablated_answers)
    assert_same_weights(model, saved)


def test_noop_ablation_scores_one_heavy_ablation_scores_lower(tokenizer, llama):
    saved = snapshot(llama)
    every_vector = [(layer, dim) for layer in (0, 1) for dim in range(64)]
    kwargs = dict(questions=TARGET, unrelated_questions=UNRELATED, max_new_tokens=8, prompt_template="{q}")
    noop = validate_concept_vectors(llama, tokenizer, every_vector, mode="noise", sigma=0.0, **kwargs)
    assert noop.target.ablated_answers == noop.target.clean_answers
    assert all(len(a.split()) >= 4 for a in noop.target.clean_answers)  # else BLEU-4 could not reach 1
    assert noop.summary() == {"target_bleu": 1.0, "target_rouge_l": 1.0, "unrelated_bleu": 1.0,
                              "unrelated_rouge_l": 1.0}
    heavy = validate_concept_vectors(llama, tokenizer, every_vector, mode="noise", sigma=1.0, **kwargs)
    assert heavy.target_bleu < 0.9 and heavy.unrelated_bleu < 0.9 and heavy.target_rouge_l < 1.0
    assert_same_weights(llama, saved)


def test_validation_defaults_to_record_fields_and_scores_every_unrelated_question(tokenizer, llama):
    unrelated = [f"the cat sat on the mat {'.' * i}" for i in range(12)] + [TARGET[0]]
    first = ConceptVector("Harry Potter", 1, 4, questions=TARGET[:3], unrelated_questions=unrelated,
                          text_completions=[{"First_half": "harry potter studied", "Second_half": "at hogwarts"}])
    second = ConceptVector("Harry Potter", 0, 9, questions=TARGET[2:], unrelated_questions=unrelated)
    result = validate_concept_vectors(llama, tokenizer, [first, second], max_new_tokens=2, score_completions=True)
    assert result.target.prompts == TARGET  # union, de-duplicated, in order
    assert result.unrelated.prompts == unrelated[:12]  # all 12 scored; the target question is dropped
    assert len(result.unrelated.bleu) == len(result.unrelated.rouge_l) == 12
    assert result.completion.prompts == ["harry potter studied"]
    assert result.locations == [(1, 4), (0, 9)] and result.concepts == ["Harry Potter", "Harry Potter"]
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert type(data["target_bleu"]) is float and data["locations"] == [[1, 4], [0, 9]]
    assert "Harry Potter" in str(result) and isinstance(result, ValidationResult)


def test_validation_restores_weights_when_generation_fails(tokenizer, llama, monkeypatch):
    saved = snapshot(llama)
    calls = []
    real = validation_module.answer_questions

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first ablated pass
            raise RuntimeError("generation failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(validation_module, "answer_questions", failing)
    with pytest.raises(RuntimeError, match="generation failed"):
        validate_concept_vectors(llama, tokenizer, [(0, 1), (1, 1)], questions=TARGET[:1], sigma=5.0,
                                max_new_tokens=2)
    assert_same_weights(llama, saved)


def test_bleu_order_option(tokenizer, llama, monkeypatch):
    answers = iter([["the cat"], ["the cat sat on the mat"]])  # clean pass, then ablated pass
    monkeypatch.setattr(validation_module, "answer_questions", lambda *a, **k: next(answers))
    standard = validate_concept_vectors(llama, tokenizer, (0, 1), questions=["q"], unrelated_questions=[])
    assert standard.target_bleu == pytest.approx(bleu("the cat sat on the mat", "the cat"))
    assert standard.unrelated is None and standard.unrelated_bleu is None
    answers = iter([["the cat"], ["the cat sat on the mat"]])
    swapped = validate_concept_vectors(llama, tokenizer, (0, 1), questions=["q"], unrelated_questions=[],
                                      bleu_order="conceptvectors")
    assert swapped.target_bleu == pytest.approx(bleu("the cat", "the cat sat on the mat"))
    assert swapped.target_rouge_l == standard.target_rouge_l


def test_validation_rejects_bad_inputs_before_generating(tokenizer, llama, monkeypatch):
    monkeypatch.setattr(validation_module, "answer_questions", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(ValueError, match="mode"):
        validate_concept_vectors(llama, tokenizer, (0, 1), questions=["q"], mode="shuffle")
    with pytest.raises(IndexError, match="dim 999"):
        validate_concept_vectors(llama, tokenizer, (0, 999), questions=["q"])
    with pytest.raises(ValueError, match="no questions"):
        validate_concept_vectors(llama, tokenizer, (0, 1))
    with pytest.raises(ValueError, match="bleu_order"):
        validate_concept_vectors(llama, tokenizer, (0, 1), questions=["q"], bleu_order="reverse")
    with pytest.raises(TypeError, match="layer, dim"):
        validate_concept_vectors(llama, tokenizer, ["layer 0"], questions=["q"])


def test_the_old_singular_names_warn_and_do_the_same(llama):
    from hf_unlearn.concepts import ablate_concept_vector, value_vector

    with ablate_concept_vectors(llama, [(1, 2)], mode="zero"):
        expected = value_vector(llama, 1, 2).clone()
    with pytest.warns(FutureWarning, match="renamed ablate_concept_vectors"):
        with ablate_concept_vector(llama, [(1, 2)], mode="zero"):
            assert torch.equal(value_vector(llama, 1, 2), expected)
    import hf_unlearn

    with pytest.warns(FutureWarning, match="renamed validate_concept_vectors"), pytest.raises(ValueError):
        hf_unlearn.validate_concept_vector(llama, None, [], [])
