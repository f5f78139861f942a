"""Every unlearning trainer on tiny models: it unlearns, it is exact under accumulation and resume, it fails loudly."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, StopAt, run_config, tiny_llama
from transformers import AutoModelForCausalLM, TrainingArguments

import hf_unlearn as hu
from hf_unlearn.data import UnlearningCollator, prepare_dataset
from hf_unlearn.losses import masked_mean, token_log_probs

PAIRS = [
    {"prompt": "who studied at hogwarts ?", "chosen": " i don't know .", "rejected": " harry potter ."},
    {"prompt": "what school is the wizard school ?", "chosen": " i don't know .", "rejected": " hogwarts castle ."},
    {"prompt": "who is a wizard boy ?", "chosen": " i don't know .", "rejected": " harry potter"},
    {"prompt": "where is hogwarts ?", "chosen": " i don't know .", "rejected": " the wizard school ."},
]

# Settings that make each method bite on a 2-layer model in 4 steps (the defaults target 7B-scale models).
TINY_OVERRIDES = {
    "simnpo": {"forget_weight": 1.0},
    "rmu": {"rmu_layer": 1, "retain_weight": 1.0, "steering_coeff": 5.0, "learning_rate": 5e-2},
    "undial": {"beta": 10.0},
    "satimp": {"beta1": 1.0, "forget_weight": 1.0},
}
# method name -> (trainer, config, extra config kwargs), every registered method but Needle (tests/test_needle.py:
# it trains located concept vectors, not the forget term alone)
METHODS = {
    name: (spec.trainer_class, spec.config_class, TINY_OVERRIDES.get(name, {}))
    for name, spec in hu.METHODS.items()
    if name != "needle"
}


def config(cls, tmp_path, **kwargs):
    return run_config(cls, tmp_path, **{"max_steps": 4, "learning_rate": 5e-3, **kwargs})


def forget_data(name):
    return PAIRS if name == "idk_dpo" else FORGET_TEXTS


def mean_nll(model, tokenizer, data) -> float:
    """Token-mean NLL of ``data`` (the answer to forget for preference pairs)."""
    if data and isinstance(data[0], dict) and "rejected" in data[0]:
        data = [{"prompt": d["prompt"], "completion": d["rejected"]} for d in data]
    # The answer's own tokens: the EOS after it (appended in training) says where it ends, not what it says.
    dataset = prepare_dataset(data, tokenizer, "probe", max_length=64, append_eos=False)
    batch = UnlearningCollator(tokenizer.pad_token_id)([dict(r) for r in dataset])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs, mask = token_log_probs(logits, batch["labels"])
    return -masked_mean(log_probs, mask).item()


def make_trainer(name, model, tokenizer, tmp_path, **kwargs):
    trainer_cls, config_cls, extra = METHODS[name]
    args = config(config_cls, tmp_path, **{**extra, **kwargs.pop("args", {})})
    retain = RETAIN_TEXTS if args.retain_loss != "none" else None
    return trainer_cls(
        model, args, train_dataset=forget_data(name), retain_dataset=retain, processing_class=tokenizer, **kwargs
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_trainer_unlearns_on_tiny_llama(name, tokenizer, trained_tiny, tmp_path):
    model = trained_tiny(tokenizer)
    forget_before = mean_nll(model, tokenizer, forget_data(name))
    retain_before = mean_nll(model, tokenizer, RETAIN_TEXTS)
    trainer = make_trainer(name, model, tokenizer, tmp_path)
    trainer.train()
    forget_after = mean_nll(model, tokenizer, forget_data(name))
    retain_after = mean_nll(model, tokenizer, RETAIN_TEXTS)
    assert forget_after > forget_before + 0.05, (forget_before, forget_after)
    if trainer.args.retain_loss != "none":
        # The retain set moves much less than the forget set.
        assert retain_after - retain_before < 0.5 * (forget_after - forget_before), (retain_before, retain_after)
    logged = trainer.state.log_history[0]
    assert "forget_loss" in logged and "loss" in logged
    if trainer.args.retain_loss != "none":
        assert "retain_loss" in logged


def test_npo_first_step_loss_is_two_over_beta_log_two(tokenizer, tmp_path):
    trainer = make_trainer("npo", tiny_llama(tokenizer), tokenizer, tmp_path, args={"max_steps": 1})
    trainer.train()
    assert trainer.state.log_history[0]["forget_loss"] == pytest.approx(
        20 * torch.log(torch.tensor(2.0)).item(), rel=1e-5
    )


@pytest.mark.parametrize("name", ["grad_diff", "rmu"])
def test_trainer_on_gpt2(name, tokenizer, trained_tiny, tmp_path):
    model = trained_tiny(tokenizer, "gpt2")
    before = mean_nll(model, tokenizer, FORGET_TEXTS)
    make_trainer(name, model, tokenizer, tmp_path).train()
    assert mean_nll(model, tokenizer, FORGET_TEXTS) > before + 0.05


def test_rmu_trains_only_the_mlp_output_projections(tokenizer, tmp_path):
    model = tiny_llama(tokenizer, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_trainer("rmu", model, tokenizer, tmp_path, args={"rmu_layer": 2, "trainable_layers": [1, 2]}).train()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"}


def test_rmu_layer_out_of_range_is_a_clear_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="decoder layers"):
        make_trainer("rmu", tiny_llama(tokenizer), tokenizer, tmp_path, args={"rmu_layer": 7})


def test_lora_uses_disabled_adapter_as_reference(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    before = mean_nll(model, tokenizer, FORGET_TEXTS)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(
        "npo", model, tokenizer, tmp_path, peft_config=lora, args={"learning_rate": 2e-2, "max_steps": 6}
    )
    assert trainer.ref_model is None  # no second copy in memory
    trainer.train()
    assert trainer.state.log_history[0]["forget_loss"] == pytest.approx(20 * 0.693147, rel=1e-4)
    peft_model = trainer.model
    assert mean_nll(peft_model, tokenizer, FORGET_TEXTS) > before + 0.05
    with peft_model.disable_adapter():
        assert mean_nll(peft_model, tokenizer, FORGET_TEXTS) == pytest.approx(before, abs=1e-5)
    for key, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base[key.replace("base_layer.", "")])


def _one_sgd_step(name, tokenizer, tmp_path, batch, accumulation, calls=None, **overrides):
    """Weights after one SGD step (lr 1); ``calls`` (a list) gets one entry per forward call of the model."""
    model = tiny_llama(tokenizer, seed=1)
    if calls is not None:
        model.register_forward_pre_hook(lambda module, args: calls.append(1))
    data = forget_data(name)
    # Uneven lengths, so token- and sequence-level normalisation differ.
    if name != "idk_dpo":
        data = [*data[:3], data[3] + " harry potter is a wizard boy of hogwarts castle ."]
    trainer_cls, config_cls, extra = METHODS[name]
    step = dict(
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
    )
    args = config(config_cls, tmp_path / f"{batch}x{accumulation}", **{**extra, **step, **overrides})
    retain = RETAIN_TEXTS if args.retain_loss != "none" else None
    trainer_cls(model, args, train_dataset=data, retain_dataset=retain, processing_class=tokenizer).train()
    return model.state_dict(), trainer_cls


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradient_accumulation_matches_full_batch(name, tokenizer, tmp_path):
    initial = tiny_llama(tokenizer, seed=1).state_dict()
    full, _ = _one_sgd_step(name, tokenizer, tmp_path, batch=4, accumulation=1)
    accumulated, _ = _one_sgd_step(name, tokenizer, tmp_path, batch=2, accumulation=2)
    moved = max((full[k] - initial[k]).abs().max().item() for k in full)
    assert moved > 1e-4
    for key in full:
        torch.testing.assert_close(accumulated[key], full[key], atol=2e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize(
    "name, overrides",
    [(n, {}) for n in sorted(METHODS) if METHODS[n][0].plain_forget_forward and METHODS[n][2].get("retain_loss",
     hu.get_method(n).default_retain_loss) != "none"] + [("npo", {"retain_loss": "kl"})],
)
def test_one_concatenated_pass_gives_the_same_update(name, overrides, tokenizer, tmp_path):
    separate_calls, shared_calls = [], []
    separate, _ = _one_sgd_step(name, tokenizer, tmp_path / "a", 2, 2, calls=separate_calls,
                                retain_forward="separate", **overrides)
    shared, _ = _one_sgd_step(name, tokenizer, tmp_path / "b", 2, 2, calls=shared_calls,
                              retain_forward="concatenated", **overrides)
    # One pass instead of two per micro-batch (forget and retain batches of different lengths: padding is used).
    assert len(shared_calls) == len(separate_calls) - 2
    default_calls = []
    _one_sgd_step(name, tokenizer, tmp_path / "c", 2, 2, calls=default_calls, **overrides)
    assert len(default_calls) == len(shared_calls)  # "auto" shares the pass where the method allows it
    for key in separate:
        torch.testing.assert_close(shared[key], separate[key], atol=2e-6, rtol=1e-5, msg=key)


def test_concatenated_pass_with_a_peft_reference_keeps_the_reference_apart(tokenizer, tmp_path):
    """With PEFT the reference is the same module with the adapter disabled: it must never get the shared logits."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    finals = []
    for mode in ("separate", "concatenated"):
        trainer = make_trainer("npo", tiny_llama(tokenizer, seed=1), tokenizer, tmp_path / mode, peft_config=lora,
                               args={"retain_loss": "kl", "retain_forward": mode, "max_steps": 3,
                                     "learning_rate": 5e-2})
        trainer.train()
        finals.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k})
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", ["idk_dpo", "rmu"])
def test_methods_that_cannot_share_the_pass_say_so(name, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="cannot run its forget and retain batches in one pass"):
        make_trainer(name, tiny_llama(tokenizer), tokenizer, tmp_path, args={"retain_forward": "concatenated"})
    make_trainer(name, tiny_llama(tokenizer), tokenizer, tmp_path, args={"retain_forward": "auto"})  # separate
    with pytest.raises(ValueError, match="retain_forward='both'"):
        config(METHODS[name][1], tmp_path, retain_forward="both")


@pytest.mark.parametrize("name", ["npo", "rmu"])
def test_resume_ends_at_the_same_weights(name, tokenizer, tmp_path):
    overrides = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "learning_rate": 1e-3}
    model = tiny_llama(tokenizer)
    initial = copy.deepcopy(model)
    make_trainer(name, model, tokenizer, tmp_path / "a", args=overrides).train()

    # Same schedule (max_steps=6) but stopped after the step-3 checkpoint, like a killed job.
    interrupted = make_trainer(
        name, copy.deepcopy(initial), tokenizer, tmp_path / "b", args=overrides, callbacks=[StopAt(3)]
    )
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed_model = copy.deepcopy(initial)
    resumed = make_trainer(name, resumed_model, tokenizer, tmp_path / "b", args=overrides)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-3"))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_precomputed_reference_matches_live_reference_and_drops_it(tokenizer, tmp_path):
    live = tiny_llama(tokenizer)
    pre = copy.deepcopy(live)
    make_trainer("npo", live, tokenizer, tmp_path / "live").train()
    trainer = make_trainer("npo", pre, tokenizer, tmp_path / "pre", args={"precompute_ref_log_probs": True})
    trainer.train()
    assert trainer.ref_model is None
    assert "ref_logps" in trainer.train_dataset.column_names
    for key, value in live.state_dict().items():
        torch.testing.assert_close(pre.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_precompute_is_refused_where_it_cannot_cover_the_reference(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="precompute_ref_log_probs is not available"):
        make_trainer("undial", tiny_llama(tokenizer), tokenizer, tmp_path, args={"precompute_ref_log_probs": True})
    with pytest.raises(ValueError, match="retain_loss='kl'"):
        make_trainer(
            "npo",
            tiny_llama(tokenizer),
            tokenizer,
            tmp_path,
            args={"precompute_ref_log_probs": True, "retain_loss": "kl"},
        )


def test_kl_retain_loss_starts_at_zero(tokenizer, tmp_path):
    trainer = make_trainer(
        "grad_diff", tiny_llama(tokenizer), tokenizer, tmp_path, args={"retain_loss": "kl", "max_steps": 1}
    )
    trainer.train()
    assert trainer.state.log_history[0]["retain_loss"] == pytest.approx(0.0, abs=1e-6)


def test_non_finite_loss_stops_with_step_and_method_and_keeps_checkpoint(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    trainer = make_trainer(
        "grad_ascent", model, tokenizer, tmp_path, args={"max_steps": 5, "save_strategy": "steps", "save_steps": 1}
    )
    calls = {"n": 0}
    original = trainer.compute_forget_loss

    def poisoned(model, inputs):
        calls["n"] += 1
        loss, metrics = original(model, inputs)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    trainer.compute_forget_loss = poisoned
    with pytest.raises(FloatingPointError, match=r"grad_ascent: non-finite loss at step 3"):
        trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint)
    # The failed step made no update: the live model still equals the last checkpoint.
    for key, value in reloaded.state_dict().items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(model.state_dict()[key], value)


def test_model_given_as_a_local_path_and_plain_training_arguments(tokenizer, tmp_path):
    tiny_llama(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = hu.GradAscentTrainer(str(tmp_path / "model"), args, train_dataset=FORGET_TEXTS)
    assert isinstance(trainer.args, hu.GradAscentConfig)
    trainer.train()
    assert trainer.state.global_step == 1


def test_evaluate_reports_forget_and_retain_losses(tokenizer, tmp_path):
    trainer = make_trainer("grad_diff", tiny_llama(tokenizer), tokenizer, tmp_path)
    trainer.eval_dataset = prepare_dataset(FORGET_TEXTS, tokenizer, "eval", 64)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_forget_loss", "eval_retain_loss"} <= set(metrics)
    assert metrics["eval_forget_loss"] < 0  # gradient ascent: minus the NLL


def test_idk_dpo_default_reproduces_open_unlearnings_two_over_beta_scale(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    losses = {}
    for scale in ("open_unlearning", "trl"):
        trainer = make_trainer("idk_dpo", model, tokenizer, tmp_path / scale, args={"loss_scale": scale, "beta": 0.5})
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
        with torch.no_grad():
            losses[scale] = trainer.compute_forget_loss(model, batch)[0]
    assert hu.IdkDPOConfig(output_dir=str(tmp_path)).loss_scale == "open_unlearning"
    torch.testing.assert_close(losses["open_unlearning"], losses["trl"] * (2 / 0.5))


@pytest.mark.parametrize("positions", ["scored", "all"])
def test_rmu_on_prompt_completion_data_steers_the_answer_tokens_by_default(tokenizer, tmp_path, positions):
    forget = [{"prompt": "who studied at hogwarts ?", "completion": " harry potter ."},
              {"prompt": "the wizard school is", "completion": " hogwarts castle"}]
    args = config(hu.RMUConfig, tmp_path, rmu_layer=1, retain_loss="none", positions=positions)
    trainer = hu.RMUTrainer(tiny_llama(tokenizer), args, train_dataset=forget, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        loss = trainer.compute_forget_loss(trainer.model, batch)[0]
        hidden = trainer.layer_activations(trainer.model, batch)
    target = args.steering_coeff * trainer.control_vector
    per_token = (hidden - target).pow(2).mean(-1)
    selected = batch["attention_mask"].bool()
    if positions == "scored":
        selected &= batch["labels"] != -100
        assert selected.sum() < batch["attention_mask"].sum()  # the prompt is left out
    expected = torch.stack([per_token[b][selected[b]].mean() for b in range(2)]).mean()
    torch.testing.assert_close(loss, expected)
