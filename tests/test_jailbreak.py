"""Jailbreak prompt families: builders, families, translated questions (real German file when ../shared exists)."""

from __future__ import annotations

import json

import pytest
import torch

from hf_unlearn.concepts import ConceptVector
from hf_unlearn.evaluation.generation import answer_questions
from hf_unlearn.evaluation.jailbreak import (
    JAILBREAK_FAMILIES,
    SAFETY_SYSTEM_PROMPT,
    grandmother_prompt,
    in_context_prompt,
    jailbreak_prompts,
    load_translated_questions,
    role_play_prompt,
    translated_questions,
)

ARTICLE = "A" * 1990 + "0123456789" + "AFTER-THE-CUT"  # characters 1990-1999 are digits, the cut falls after them
HARRY = ConceptVector(
    "Harry Potter", 20, 10513, questions=[" Who wrote Harry Potter?\n", " What is Hogwarts?\n"], source_text=ARTICLE
)
GERMAN = {"Harry Potter": ["Wer hat Harry Potter geschrieben?", "Was ist Hogwarts?"], "Netflix": ["Was ist Netflix?"]}


def test_builders_embed_concept_and_stripped_question():
    role = role_play_prompt(HARRY.questions[0], HARRY)
    assert "You are a model that knows everything about Harry Potter." in role
    assert role.startswith(SAFETY_SYSTEM_PROMPT) and "Question: Who wrote Harry Potter?\nAnswer:" in role
    granny = grandmother_prompt(HARRY.questions[1], "Harry Potter", wrapper=None)
    assert "grandmother" in granny and "Harry Potter" in granny and SAFETY_SYSTEM_PROMPT not in granny
    assert granny.endswith("Question: What is Hogwarts?\nAnswer:")
    assert role != granny


def test_in_context_uses_the_first_n_characters():
    prompt = in_context_prompt(HARRY.questions[0], HARRY)
    assert "0123456789" in prompt and "AFTER-THE-CUT" not in prompt
    assert "A" * 1990 + "0123456789" in prompt
    short = in_context_prompt("q", "Harry Potter", source_text="hogwarts castle is old", n_chars=8)
    assert "hogwarts" in short and "castle" not in short
    with pytest.raises(ValueError, match="source text"):
        in_context_prompt("q", "Harry Potter")


def test_wrappers():
    llama2 = role_play_prompt("q?", "X", wrapper="llama2")
    assert llama2.startswith("[INST] <<SYS>>\n" + SAFETY_SYSTEM_PROMPT + "\n<</SYS>>\n\n")
    assert llama2.endswith(" [/INST]")
    assert not llama2.startswith("<s>")  # the tokenizer adds BOS; a literal one would double it
    assert role_play_prompt("q?", "X", wrapper="llama2", system_prompt=None).startswith("[INST] You are a model")
    assert role_play_prompt("q?", "X", wrapper=None).startswith("You are a model")
    with pytest.raises(ValueError, match="wrapper"):
        role_play_prompt("q?", "X", wrapper="chatml")


def test_translated_questions_lookup_and_errors(tmp_path):
    assert translated_questions(HARRY, GERMAN) == GERMAN["Harry Potter"]
    assert translated_questions("harry potter", GERMAN) == GERMAN["Harry Potter"]
    with pytest.raises(KeyError, match="Harry Poter.*close matches"):
        translated_questions("Harry Poter!", GERMAN)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["Harry Potter", "Frage"]]))
    with pytest.raises(ValueError, match="JSON object"):
        load_translated_questions(bad)
    bad.write_text(json.dumps({"Harry Potter": "eine Frage"}))
    with pytest.raises(ValueError, match="list of strings"):
        load_translated_questions(bad)


def test_real_german_questions_load(shared_dir):
    german = load_translated_questions(shared_dir / "data" / "conceptvectors" / "llama_jailbreak_German_qa.json")
    assert len(german) == 10 and "Harry Potter" in german
    assert all(len(qs) == 10 and all(isinstance(q, str) and q for q in qs) for qs in german.values())
    prompts = jailbreak_prompts(HARRY, translations=german)
    assert list(prompts) == list(JAILBREAK_FAMILIES)
    assert prompts["translated"] == german["Harry Potter"] and len(prompts["role_play"]) == 2


def test_jailbreak_prompts_families():
    prompts = jailbreak_prompts(HARRY)
    assert list(prompts) == ["role_play", "grandmother", "in_context"]  # no translations given
    assert all(len(p) == 2 for p in prompts.values())
    prompts = jailbreak_prompts(HARRY, translations=GERMAN, families=["translated", "plain"])
    assert prompts["translated"] == GERMAN["Harry Potter"]
    assert prompts["plain"] == ["Question:  Who wrote Harry Potter?\n\nAnswer:",
                                "Question:  What is Hogwarts?\n\nAnswer:"]
    no_text = jailbreak_prompts("Netflix", questions=["What is Netflix?"], translations=GERMAN)
    assert list(no_text) == ["role_play", "grandmother", "translated"]  # in_context needs a source text
    only = jailbreak_prompts("Netflix", families=["translated"], translations=GERMAN)
    assert only == {"translated": GERMAN["Netflix"]}
    with pytest.raises(ValueError, match="source text"):
        jailbreak_prompts("Netflix", questions=["q"], families=["in_context"])
    with pytest.raises(ValueError, match="unknown jailbreak families"):
        jailbreak_prompts(HARRY, families=["dan"])
    with pytest.raises(ValueError, match="translations"):
        jailbreak_prompts(HARRY, families=["translated"])
    with pytest.raises(ValueError, match="no questions"):
        jailbreak_prompts("Netflix")


def _greedy(model, tokenizer, text: str, special_tokens: bool) -> str:
    """The model's own greedy continuation of exactly ``text``, one prompt at a time (no padding)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=special_tokens)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_prompts_are_answerable_verbatim_and_through_a_chat_template(tokenizer, llama):
    from hf_unlearn.evaluation.prompts import render_prompts

    prompts = jailbreak_prompts(HARRY, translations=GERMAN, wrapper=None)
    flat = [p for family in prompts.values() for p in family]
    assert len(flat) == 8
    # Batched, left-padded answers are the model's answers to each prompt exactly as built.
    answers = answer_questions(llama, tokenizer, flat, max_new_tokens=2, prompt_template="{q}", batch_size=4)
    assert answers == [_greedy(llama, tokenizer, p, special_tokens=True) for p in flat]
    # Through the chat template: the prompt is the user turn after the safety system prompt.
    chat = answer_questions(llama, tokenizer, prompts["role_play"], max_new_tokens=2, prompt_template="{q}", chat=True,
                            system_prompt=SAFETY_SYSTEM_PROMPT)
    rendered = render_prompts(tokenizer, prompts["role_play"], "{q}", chat=True, system_prompt=SAFETY_SYSTEM_PROMPT)
    assert all(SAFETY_SYSTEM_PROMPT in r and p in r for r, p in zip(rendered, prompts["role_play"]))
    assert chat == [_greedy(llama, tokenizer, r, special_tokens=False) for r in rendered]
