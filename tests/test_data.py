"""Dataset formats, padding, retain pairing, and the errors a user gets for bad input."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, build_tokenizer, tiny_llama

import hf_unlearn as hu
from hf_unlearn.data import UnlearningCollator, prepare_dataset, retain_indices


def cfg(cls=hu.GradDiffConfig, tmp_path=None, **kwargs):
    return cls(output_dir=str(tmp_path or "unused"), report_to="none", use_cpu=True, max_steps=1, **kwargs)


def test_language_modeling_scores_every_token(tokenizer):
    ds = prepare_dataset(["harry potter is a wizard"], tokenizer, "forget", max_length=32)
    row = ds[0]
    assert row["labels"] == row["input_ids"]
    assert row["example_index"] == 0


def test_prompt_completion_scores_only_the_completion_and_its_eos(tokenizer):
    pair = {"prompt": "who is a wizard ?", "completion": " harry potter"}
    row = prepare_dataset([pair], tokenizer, "f", 32)[0]
    prompt_len = len(tokenizer("who is a wizard ?")["input_ids"])
    assert row["labels"][:prompt_len] == [-100] * prompt_len
    # As open-unlearning: the end of the answer is part of what is scored.
    assert row["labels"][-1] == row["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row["labels"][prompt_len:-1]) == "harry potter"
    plain = prepare_dataset([pair], tokenizer, "f", 32, append_eos=False)[0]
    assert plain["input_ids"] == row["input_ids"][:-1] and plain["labels"] == row["labels"][:-1]
    # not doubled when the completion already ends with it; cut off with the rest by max_length
    ended = {"prompt": pair["prompt"], "completion": pair["completion"] + tokenizer.eos_token}
    assert prepare_dataset([ended], tokenizer, "f", 32)[0]["input_ids"] == row["input_ids"]
    with pytest.warns(UserWarning, match="truncated"):
        short = prepare_dataset([pair], tokenizer, "f", len(row["input_ids"]) - 1)[0]
    assert short["input_ids"] == plain["input_ids"]


def test_eos_is_appended_to_text_only_when_asked(tokenizer):
    default = prepare_dataset(["harry potter"], tokenizer, "f", 32)[0]
    assert default["input_ids"][-1] != tokenizer.eos_token_id
    asked = prepare_dataset(["harry potter"], tokenizer, "f", 32, append_eos=True)[0]
    assert asked["input_ids"] == [*default["input_ids"], tokenizer.eos_token_id]
    assert asked["labels"][-1] == tokenizer.eos_token_id


def test_conversational_messages_score_the_last_assistant_turn(tokenizer):
    messages = [{"role": "user", "content": "who is a wizard ?"}, {"role": "assistant", "content": "harry potter"}]
    row = prepare_dataset([{"messages": messages}], tokenizer, "f", 64)[0]
    scored = [t for t in row["labels"] if t != -100]
    assert tokenizer.decode(scored).split()[:2] == ["harry", "potter"]
    assert "<|user|>" in tokenizer.decode(row["input_ids"])
    conversational_pc = {"prompt": messages[:1], "completion": messages[1:]}
    assert prepare_dataset([conversational_pc], tokenizer, "f", 64)[0]["labels"] == row["labels"]


def test_collator_pads_right_and_keeps_the_tokenizer_mask(tokenizer):
    ds = prepare_dataset(["harry potter", "the cat sat on the mat"], tokenizer, "f", 32)
    batch = UnlearningCollator(tokenizer.pad_token_id, pad_to_multiple_of=8)([dict(r) for r in ds])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"][0].tolist() == [1, 1] + [0] * 6
    assert batch["labels"][0, 2:].eq(-100).all()
    assert batch["example_index"].tolist() == [0, 1]


def test_pad_equal_eos_keeps_real_eos_attended():
    tok = build_tokenizer()
    tok.pad_token = tok.eos_token
    ds = prepare_dataset(["harry potter </s>", "the cat sat on the mat"], tok, "f", 32)
    batch = UnlearningCollator(tok.pad_token_id)([dict(r) for r in ds])
    assert batch["attention_mask"][0, :3].tolist() == [1, 1, 1]  # the real EOS is not masked as padding


def test_retain_pairing_is_deterministic_and_differs_between_ranks_and_epochs():
    idx = list(range(50))
    a = retain_indices(idx, 7, seed=42, rank=0, epoch=0)
    assert a == retain_indices(idx, 7, seed=42, rank=0, epoch=0)
    assert a != retain_indices(idx, 7, seed=42, rank=1, epoch=0)
    assert a != retain_indices(idx, 7, seed=42, rank=0, epoch=1)
    assert a != retain_indices(idx, 7, seed=43, rank=0, epoch=0)
    assert set(a) == set(range(7))


def test_empty_forget_set_is_rejected(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        hu.GradAscentTrainer(
            tiny_llama(tokenizer), cfg(hu.GradAscentConfig, tmp_path), train_dataset=[], processing_class=tokenizer
        )


def test_unknown_columns_say_how_to_rename(tokenizer, tmp_path):
    data = Dataset.from_list([{"question": "who ?", "answer": "harry"}])
    with pytest.raises(ValueError, match="rename_columns"):
        hu.GradAscentTrainer(
            tiny_llama(tokenizer), cfg(hu.GradAscentConfig, tmp_path), train_dataset=data, processing_class=tokenizer
        )


def test_preference_method_without_chosen_rejected(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="'chosen'.*'rejected'"):
        hu.IdkDPOTrainer(
            tiny_llama(tokenizer),
            cfg(hu.IdkDPOConfig, tmp_path),
            train_dataset=FORGET_TEXTS,
            retain_dataset=RETAIN_TEXTS,
            processing_class=tokenizer,
        )


def test_unknown_retain_loss(tmp_path):
    with pytest.raises(ValueError, match=r"retain_loss='mse'.*\['none', 'nll', 'kl'\]"):
        cfg(tmp_path=tmp_path, retain_loss="mse")


def test_retain_loss_without_retain_set(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="needs a retain_dataset"):
        hu.GradDiffTrainer(
            tiny_llama(tokenizer), cfg(tmp_path=tmp_path), train_dataset=FORGET_TEXTS, processing_class=tokenizer
        )


def test_unused_retain_set_warns(tokenizer, tmp_path):
    with pytest.warns(UserWarning, match="not used"):
        hu.GradAscentTrainer(
            tiny_llama(tokenizer),
            cfg(hu.GradAscentConfig, tmp_path),
            train_dataset=FORGET_TEXTS,
            retain_dataset=RETAIN_TEXTS,
            processing_class=tokenizer,
        )


def test_tokenizer_without_pad_token_gets_eos_with_warning(tmp_path):
    tok = build_tokenizer()
    tok.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        hu.GradAscentTrainer(
            tiny_llama(build_tokenizer()),
            cfg(hu.GradAscentConfig, tmp_path),
            train_dataset=FORGET_TEXTS,
            processing_class=tok,
        )
    assert tok.pad_token == tok.eos_token


def test_long_sequences_are_truncated_with_a_count(tokenizer, tmp_path):
    with pytest.warns(UserWarning, match="4 of 4 examples .* longer than max_length=5"):
        trainer = hu.GradAscentTrainer(
            tiny_llama(tokenizer),
            cfg(hu.GradAscentConfig, tmp_path, max_length=5),
            train_dataset=FORGET_TEXTS,
            processing_class=tokenizer,
        )
    assert max(len(x) for x in trainer.train_dataset["input_ids"]) == 5


def test_completion_cut_off_entirely_is_an_error(tokenizer):
    data = [{"prompt": "the wizard school of harry potter is", "completion": " hogwarts"}]
    with pytest.raises(ValueError, match="no example .* has a token to score"):
        prepare_dataset(data, tokenizer, "forget", max_length=4)


def test_wrong_config_class_and_same_ref_model(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    with pytest.raises(ValueError, match="needs a NPOConfig"):
        hu.NPOTrainer(model, cfg(hu.GradDiffConfig, tmp_path), train_dataset=FORGET_TEXTS, processing_class=tokenizer)
    with pytest.raises(ValueError, match="separate model"):
        hu.NPOTrainer(
            model,
            cfg(hu.NPOConfig, tmp_path),
            train_dataset=FORGET_TEXTS,
            retain_dataset=RETAIN_TEXTS,
            processing_class=tokenizer,
            ref_model=model,
        )


def test_bf16_defaults_to_on_only_where_a_bf16_gpu_trains(tmp_path, monkeypatch):
    from hf_unlearn.trainers.base import default_bf16

    assert hu.NPOConfig(output_dir=str(tmp_path)).bf16 is default_bf16(False, False)
    assert hu.NPOConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert default_bf16(fp16=False, use_cpu=False) is True
    assert default_bf16(fp16=True, use_cpu=False) is False and default_bf16(fp16=False, use_cpu=True) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert default_bf16(fp16=False, use_cpu=False) is False


def test_method_defaults_follow_the_literature(tmp_path):
    d = str(tmp_path)
    assert hu.NPOConfig(output_dir=d).beta == 0.1
    assert (hu.SimNPOConfig(output_dir=d).beta, hu.SimNPOConfig(output_dir=d).forget_weight) == (4.5, 0.125)
    rmu = hu.RMUConfig(output_dir=d)
    assert (rmu.rmu_layer, rmu.steering_coeff, rmu.retain_weight, rmu.resolved_trainable_layers()) == (
        7,
        20.0,
        100.0,
        [5, 6, 7],
    )
    assert (hu.UNDIALConfig(output_dir=d).beta, hu.UNDIALConfig(output_dir=d).retain_loss) == (10.0, "none")
    assert hu.GradAscentConfig(output_dir=d).retain_loss == "none"
    assert (hu.SatImpConfig(output_dir=d).beta1, hu.SatImpConfig(output_dir=d).beta2) == (5.0, 1.0)


def test_config_parses_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(hu.NPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--beta", "0.2", "--retain_loss", "kl", "--use_cpu", "true"]
    )
    assert (config.beta, config.retain_loss) == (0.2, "kl")
