"""Needle: only the concept vectors train (weight decay included) in the Llama and GPT-2 layouts, the update is the one
AdamW would make on the weight column, checkpoints are plain models, resume is exact, bad inputs fail clearly."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, StopAt, run_config, tiny_gpt2, tiny_llama
from transformers import AutoModelForCausalLM, HfArgumentParser

from hf_unlearn.architectures import get_adapter, mlp_out_module, value_vectors_view
from hf_unlearn.concepts import ConceptVector, ablate_concept_vectors
from hf_unlearn.data import UnlearningCollator, prepare_dataset
from hf_unlearn.losses import masked_mean, token_log_probs
from hf_unlearn.trainers.needle import NEEDLE_MODULE, NeedleConfig, NeedleTrainer


def config(tmp_path, **kwargs) -> NeedleConfig:
    defaults = {"max_steps": 3, "optim": "adamw_torch", "weight_decay": 0.1}
    return run_config(NeedleConfig, tmp_path, **{**defaults, **kwargs})


def forget_batch(tokenizer) -> dict[str, torch.Tensor]:
    dataset = prepare_dataset(FORGET_TEXTS, tokenizer, "probe", max_length=64)
    return UnlearningCollator(tokenizer.pad_token_id)([dict(r) for r in dataset])


def forget_nll(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs, mask = token_log_probs(logits, batch["labels"])
    return -masked_mean(log_probs, mask)


def ablated_state(model, locations, seed: int, mode: str = "noise") -> dict[str, torch.Tensor]:
    """The state dict of ``model`` after the causal-validation tool's ablation of ``locations``."""
    model = copy.deepcopy(model)
    with ablate_concept_vectors(model, locations, mode=mode, sigma=0.1, seed=seed):
        return {k: v.clone() for k, v in model.state_dict().items()}


def changed_vectors(model, before: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Every entry of the state dict that differs from ``before``: value-vector indices for MLP output weights
    (columns, or rows for GPT-2's Conv1D), ``[-1]`` for any other tensor."""
    transposed = get_adapter(model).transposed
    out_weights = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if any(module is mlp_out_module(model, layer) for layer in range(model.config.num_hidden_layers))
    }
    changed = {}
    for key, value in model.state_dict().items():
        diff = value != before[key]
        if not diff.any():
            continue
        if key in out_weights:
            changed[key] = diff.any(dim=1 if transposed else 0).nonzero().flatten().tolist()
        else:
            changed[key] = [-1]
    return changed


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_only_the_concept_vectors_train_and_checkpoints_are_plain_models(tokenizer, trained_tiny, tmp_path):
    model = trained_tiny(tokenizer)
    locations = [(0, 3), (1, 10), (1, 20)]  # two layers, and two vectors in one layer
    expected = ablated_state(model, locations, seed=7)
    args = config(tmp_path, concept_vectors=locations, ablation_seed=7, save_strategy="steps", save_steps=3)
    trainer = NeedleTrainer(model, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer)
    # The trainer ablates with the validation tool's noise for the same seed, and nothing else.
    assert changed_vectors(model, expected) == {}
    batch = forget_batch(tokenizer)
    with torch.no_grad():
        nll_before = forget_nll(model, batch).item()

    trainer.train()

    # Weight decay 0.1 with AdamW, yet every other weight is bit-identical to the ablated model.
    assert changed_vectors(model, expected) == {
        "model.layers.0.mlp.down_proj.weight": [3],
        "model.layers.1.mlp.down_proj.weight": [10, 20],
    }
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll_after = forget_nll(model, batch).item()
    assert nll_after > nll_before + 0.1, (nll_before, nll_after)

    # Nothing is left on the model: no hooks, no extra parameters, the original requires_grad flags.
    assert no_hooks(model)
    assert not hasattr(model, NEEDLE_MODULE)
    assert set(model.state_dict()) == set(expected)
    assert all(p.requires_grad for p in model.parameters())

    logged = trainer.state.log_history[0]
    assert {"forget_loss", "forget_nll", "delta_norm", "delta_norm_1_10", "grad_norm"} <= set(logged)
    assert logged["ablation_seed"] == 7 and logged["grad_norm"] > 0 and logged["delta_norm"] == 0
    assert trainer.state.log_history[2]["delta_norm"] > 0
    assert trainer.args.concept_vectors == [list(v) for v in locations]

    trainer.save_model(str(tmp_path / "final"))
    for directory in (tmp_path / "out" / "checkpoint-3", tmp_path / "final"):
        with safe_open(directory / "model.safetensors", "pt") as saved:
            assert set(saved.keys()) <= set(model.state_dict())  # no trace of the trained copies
        reloaded = AutoModelForCausalLM.from_pretrained(directory)
        assert set(reloaded.state_dict()) == set(model.state_dict())
        assert changed_vectors(reloaded, model.state_dict()) == {}
        with torch.no_grad():
            reloaded_logits = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(reloaded_logits, logits)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_first_step_is_adamw_on_the_weight_vector(kind, tokenizer, tmp_path):
    """The gradient is the one the weight's column (GPT-2: row) would get, and weight decay shrinks the whole
    vector, as AdamW on the weight does; nothing else moves."""
    build = tiny_llama if kind == "llama" else tiny_gpt2
    model = build(tokenizer)
    layer, dim, lr, decay = 1, 5, 0.2, 0.5
    start = ablated_state(model, [(layer, dim)], seed=0)

    # The update AdamW makes when the whole weight trains and only this vector's gradient is kept.
    manual = build(tokenizer)
    manual.load_state_dict(start)
    manual.eval()  # no dropout, as in the trainer
    batch = forget_batch(tokenizer)
    (-forget_nll(manual, batch)).backward()
    weight = mlp_out_module(manual, layer).weight
    grad = (weight.grad.T if get_adapter(manual).transposed else weight.grad)[:, dim]
    vector = value_vectors_view(manual, layer)[:, dim].detach()
    clipped = grad * min(1.0, 1.0 / (grad.norm().item() + 1e-6))
    expected = vector * (1 - lr * decay) - lr * clipped / (clipped.abs() + 1e-8)

    args = config(
        tmp_path,
        concept_vectors=[[layer, dim]],
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=lr,
        weight_decay=decay,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
    )
    trainer = NeedleTrainer(model, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer)
    trainer.train()
    key = "transformer.h.1.mlp.c_proj.weight" if kind == "gpt2" else "model.layers.1.mlp.down_proj.weight"
    assert changed_vectors(model, start) == {key: [dim]}
    torch.testing.assert_close(value_vectors_view(model, layer)[:, dim], expected, atol=1e-6, rtol=1e-5)
    assert trainer.state.log_history[0]["grad_norm"] == pytest.approx(grad.norm().item(), rel=1e-4)
    assert no_hooks(model)


def test_gradient_checkpointing_gives_the_same_vectors_and_leaves_no_hook(tokenizer, tmp_path):
    locations = [(0, 3), (1, 10)]
    plain, checkpointed = tiny_llama(tokenizer), tiny_llama(tokenizer)
    args = config(tmp_path / "a", concept_vectors=locations)
    NeedleTrainer(plain, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer).train()
    args = config(
        tmp_path / "b",
        concept_vectors=locations,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    NeedleTrainer(checkpointed, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer).train()
    start = ablated_state(tiny_llama(tokenizer), locations, seed=0)
    assert changed_vectors(checkpointed, start) == {
        "model.layers.0.mlp.down_proj.weight": [3],
        "model.layers.1.mlp.down_proj.weight": [10],
    }
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=key)
    # Only transformers' own input-grad hook, which it adds (and keeps) with checkpointing for any Trainer.
    own = {id(handle.hooks_dict_ref()[handle.id]) for handle in checkpointed._require_grads_hooks}
    left = [h for m in checkpointed.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    assert len(left) == len(own) == 1 and {id(hook) for hook in left} == own


def test_resume_ends_at_the_same_weights(tokenizer, tmp_path):
    locations = [(0, 3), (1, 10)]
    overrides = dict(concept_vectors=locations, max_steps=6, save_strategy="steps", save_steps=3, learning_rate=0.05)
    initial = tiny_llama(tokenizer)

    def make(model, directory, **kwargs):
        args = config(directory, **overrides)
        return NeedleTrainer(model, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer, **kwargs)

    model = copy.deepcopy(initial)
    make(model, tmp_path / "a").train()

    interrupted = make(copy.deepcopy(initial), tmp_path / "b", callbacks=[StopAt(3)])
    interrupted.train()
    assert interrupted.state.global_step == 3
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    resumed_model = copy.deepcopy(initial)
    resumed = make(resumed_model, tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    # Steps 4-6 moved the vectors (the comparison below is not between two copies of the checkpoint) ...
    at_checkpoint = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    assert set(changed_vectors(resumed_model, at_checkpoint)) == {
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    }
    # ... and ended where the uninterrupted run did.
    for key, value in model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_ablation_modes_vector_records_and_the_original_reference(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    original = value_vectors_view(model, 1)[:, 4].clone()
    records = [ConceptVector(concept="harry potter", layer=1, dim=4), ConceptVector(concept="wand", layer=0, dim=9)]
    args = config(tmp_path, ablation="zero", retain_loss="kl")
    data = dict(train_dataset=FORGET_TEXTS, retain_dataset=RETAIN_TEXTS, processing_class=tokenizer)
    trainer = NeedleTrainer(model, args, vectors=records, **data)
    assert trainer.concept_vectors == [(1, 4), (0, 9)] and args.concept_vectors == [[1, 4], [0, 9]]
    assert not value_vectors_view(model, 1)[:, 4].any() and not value_vectors_view(model, 0)[:, 9].any()
    # A KL retain term anchors to the original model, not to the ablated one.
    assert torch.equal(value_vectors_view(trainer.ref_model, 1)[:, 4], original)

    # Building a second trainer on the same model warns before ablating again; ablation="none" leaves it alone.
    with pytest.warns(UserWarning, match=r"\[\(1, 4\)\] of this model were already ablated"):
        NeedleTrainer(model, config(tmp_path), vectors=[(1, 4), (1, 5)], **data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    NeedleTrainer(model, config(tmp_path, ablation="none"), vectors=(1, 4), **data)
    assert changed_vectors(model, before) == {}


def test_concept_vectors_parse_from_the_command_line_and_serialise(tmp_path):
    parser = HfArgumentParser(NeedleConfig)
    for text in ("20:10513,21:398", "[[20, 10513], [21, 398]]", "20:10513 21:398"):
        (args,) = parser.parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--use_cpu", "true", "--concept_vectors", text]
        )
        assert args.concept_vectors == [[20, 10513], [21, 398]]
    assert args.learning_rate == 0.2 and args.num_train_epochs == 1.0 and args.retain_loss == "none"
    assert '"concept_vectors": [\n    [\n      20' in args.to_json_string()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concept_vectors": [[2, 0]]}, r"layer 2 does not exist, the model has 2 decoder layers"),
        ({"concept_vectors": [[1, 64]]}, r"dim 64 does not exist, layer 1's MLP output projection has 64"),
        ({}, "at least one concept vector"),
        ({"vectors": []}, "empty"),
        ({"vectors": [(0, 1), (0, 1)]}, r"\(0, 1\) is listed twice"),
        ({"concept_vectors": [[0, 1]], "vectors": [(0, 2)]}, "name different concept vectors"),
        ({"concept_vectors": [[0, 1]], "peft_config": LoraConfig(r=2, target_modules=["q_proj"])}, "peft_config"),
        ({"concept_vectors": [[0, 1]], "optimizers": (torch.optim.SGD([torch.zeros(1)], lr=1), None)}, "optim"),
        ({"lora_model": True, "concept_vectors": [[0, 1]]}, "plain model"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, message, tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    if kwargs.pop("lora_model", False):
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    args = config(tmp_path, **{k: kwargs.pop(k) for k in ("concept_vectors",) if k in kwargs})
    with pytest.raises(ValueError, match=message):
        NeedleTrainer(model, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concept_vectors": [[-1, 3]]}, "negative index"),
        ({"concept_vectors": "20-10513"}, "is not 'layer:dim'"),
        ({"concept_vectors": [[1, 2, 3]]}, r"not a \(layer, dim\) pair"),
        ({"concept_vectors": [[1.5, 2]]}, "must be an integer"),
        ({"concept_vectors": []}, "empty"),
        ({"ablation": "gauss"}, "choose one of"),
        ({"ablation_sigma": -0.1}, "ablation_sigma"),
    ],
)
def test_bad_config_values_are_clear_errors(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **kwargs)
