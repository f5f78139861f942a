"""Side effects, relearning and jailbreak scoring on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS

from hf_unlearn.concepts import ConceptVector
from hf_unlearn.dissect import side_effects
from hf_unlearn.evaluation import answer_questions, jailbreak_attack, relearning_attack

QUESTIONS = ["harry potter studied at", "the capital city of france is"]


def test_identical_models_have_no_side_effects(tokenizer, trained_tiny):
    model = trained_tiny(tokenizer)
    report = side_effects(
        model, copy.deepcopy(model), tokenizer, QUESTIONS, RETAIN_TEXTS[:2], max_new_tokens=6, prompt_template="{q}"
    )
    assert report["answers"]["rouge_l"] == pytest.approx(1.0)
    assert report["perplexity_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert report["mean_kl"] == pytest.approx(0.0, abs=1e-6)


def test_a_damaged_model_shows_side_effects(tokenizer, trained_tiny):
    model = trained_tiny(tokenizer)
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        for p in damaged.model.layers[1].parameters():
            p.add_(torch.randn_like(p) * 0.5)
    report = side_effects(
        model, damaged, tokenizer, QUESTIONS, RETAIN_TEXTS[:2], max_new_tokens=6, prompt_template="{q}"
    )
    assert report["perplexity_ratio"] > 1.05
    assert report["mean_kl"] > 0.01


def test_relearning_brings_forgotten_answers_back_and_leaves_the_model_alone(tokenizer, trained_tiny):
    original = trained_tiny(tokenizer)
    unlearned = copy.deepcopy(original)
    torch.manual_seed(0)
    with torch.no_grad():
        weight = unlearned.model.layers[1].mlp.down_proj.weight
        weight.add_(torch.randn_like(weight))
    before = {k: v.clone() for k, v in unlearned.state_dict().items()}
    reference = answer_questions(original, tokenizer, QUESTIONS, max_new_tokens=5, prompt_template="{q}")
    report = relearning_attack(
        unlearned,
        tokenizer,
        FORGET_TEXTS + RETAIN_TEXTS,
        QUESTIONS,
        reference,
        steps=40,
        learning_rate=1e-2,
        max_new_tokens=5,
        prompt_template="{q}",
    )
    assert report["after"]["rouge_l"] > report["before"]["rouge_l"]
    assert report["recovered_rouge_l"] > 0
    for key, value in unlearned.state_dict().items():
        assert torch.equal(value, before[key])


def test_jailbreak_scores_every_family_against_the_originals_answers(tokenizer, trained_tiny):
    from hf_unlearn.evaluation import jailbreak_prompts, text_overlap

    model = trained_tiny(tokenizer)
    damaged = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in damaged.model.layers[1].parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3, alpha=1.0)
    vector = ConceptVector("harry potter", 1, 0, questions=QUESTIONS[:1], source_text=FORGET_TEXTS[0])
    translations = {"harry potter": ["wer ist harry potter ?"]}
    scores = jailbreak_attack(model, damaged, tokenizer, vector, max_new_tokens=4, translations=translations)
    prompts = jailbreak_prompts(vector, translations=translations)
    assert set(scores) == set(prompts) and {"role_play", "grandmother", "in_context"} <= set(scores)
    for family, s in scores.items():
        original = answer_questions(model, tokenizer, prompts[family], max_new_tokens=4, prompt_template="{q}")
        unlearned = answer_questions(damaged, tokenizer, prompts[family], max_new_tokens=4, prompt_template="{q}")
        assert (s["prompts"], s["original"], s["unlearned"]) == (prompts[family], original, unlearned)
        assert s["rouge_l"] == pytest.approx(text_overlap(unlearned, original)["rouge_l"]), family
    # The damage shows: at least one family's answers moved away from the original's.
    assert min(s["rouge_l"] for s in scores.values()) < 1.0
