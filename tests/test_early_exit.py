"""EarlyExitForCausalLM against the unwrapped backbone: exactness, exit rules, the cache fill, batching, saving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from test_architectures import CONFIGS
from tiny_models import tiny_llama
from transformers import AutoModelForCausalLM, DynamicCache

from hf_unlearn.early_exit import EarlyExitConfig, EarlyExitForCausalLM

PROMPTS = ["the cat sat on the mat", "harry potter studied at", "the capital city of france is paris and"]


def _family(name: str, layers: int = 4):
    config_name, model_name, kwargs = CONFIGS[name]
    kwargs = {**kwargs, ("n_layer" if name == "gpt2" else "num_hidden_layers"): layers}
    kwargs.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return getattr(transformers, model_name)(getattr(transformers, config_name)(**kwargs)).eval()


WALKABLE = ["gemma", "gpt2", "llama", "mistral", "olmo", "phi3", "qwen2", "qwen3"]


@pytest.fixture(params=["llama", "gpt2"])
def backbone(request, tokenizer, trained_tiny):
    """A 4-layer model trained on the test texts, so its exits are confident on some tokens and not on others."""
    return trained_tiny(tokenizer, request.param, steps=60, layers=4).eval()


# Per family: thresholds at which some tokens exit early and others do not (the trained GPT-2 is less peaked).
THRESHOLDS = {
    "llama": dict(confidence_threshold=0.97, entropy_threshold=0.15),
    "gpt2": dict(confidence_threshold=0.8, entropy_threshold=0.8),
}


def _settings(backbone, strategy, **extra):
    if strategy in ("confidence", "entropy"):
        name = f"{strategy}_threshold"
        extra[name] = THRESHOLDS[backbone.config.model_type][name]
    return dict(exit_strategy=strategy, **extra)


def _batch(tokenizer, texts=PROMPTS):
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True)


def _hidden_states(backbone, input_ids, attention_mask=None):
    """Raw residual stream after each layer (index k = after k layers), from the unwrapped backbone."""
    captured = []
    layers = EarlyExitForCausalLM.from_backbone(backbone)._layers()
    hooks = [layer.register_forward_hook(lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out))
             for layer in layers]
    try:
        backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return [None, *captured]


def _head(backbone, hidden):
    wrapper = EarlyExitForCausalLM.from_backbone(backbone)
    return backbone.get_output_embeddings()(wrapper._part("final_norm")(hidden))


# ---------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", WALKABLE)
def test_none_reproduces_every_walkable_backbone(name):
    base = _family(name)
    model = EarlyExitForCausalLM.from_backbone(base, min_exit_layer=1).eval()
    ids = torch.tensor([[1, 5, 7, 9, 11, 3], [1, 8, 6, 4, 12, 13]])
    assert torch.equal(model(ids).logits, base(ids).logits)
    generated = base.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), generated)


def test_none_reproduces_the_backbone_with_padding_and_sampling(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone).eval()
    batch = _batch(tokenizer)
    assert torch.equal(model(**batch).logits, backbone(**batch).logits)
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(model.generate(**batch, **greedy), backbone.generate(**batch, **greedy))
    sampled = dict(max_new_tokens=6, do_sample=True, top_k=0, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(3)
    expected = backbone.generate(**batch, **sampled)
    torch.manual_seed(3)
    assert torch.equal(model.generate(**batch, **sampled), expected)


def test_wrapping_leaves_the_backbone_weights_untouched(backbone):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = EarlyExitForCausalLM.from_backbone(backbone, exit_head="adapter")
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    added = [k for k in model.state_dict() if not k.startswith("backbone.")]
    assert added and all(k.startswith("early_exit.") for k in added)


def test_bf16_none_matches_the_bf16_backbone(tokenizer):
    base = tiny_llama(tokenizer, layers=4).to(torch.bfloat16).eval()
    model = EarlyExitForCausalLM.from_backbone(base).eval()
    assert next(model.early_exit.parameters()).dtype == torch.bfloat16
    batch = _batch(tokenizer)
    assert torch.equal(model(**batch).logits, base(**batch).logits)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, exit_strategy="fixed", fixed_exit_layer=2)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4


# ---------------------------------------------------------------------------------------------- the fill rule


def _layer_kv(backbone, wrapper, index, hidden, position_ids):
    """What layer ``index``'s own attention stores for input ``hidden``: the definition of the fill."""
    scratch = DynamicCache(config=backbone.config)
    rotary = wrapper._part("rotary_emb")
    embeddings = rotary(hidden, position_ids=position_ids) if rotary is not None else None
    wrapper._run_layer(wrapper._layers()[index], hidden, None, embeddings, position_ids, scratch, True)
    return scratch.layers[index].keys, scratch.layers[index].values


def _fixed_exit_by_definition(backbone, input_ids, k, steps):
    """Greedy generation exiting at layer k, built from the backbone's own forward: each step runs the full
    backbone, keeps its first k layers' cache entries and replaces the deeper ones with what each deeper layer's
    attention stores for the exit state h_k."""
    wrapper = EarlyExitForCausalLM.from_backbone(backbone)
    layers = wrapper._layers()
    cache = DynamicCache(config=backbone.config)
    out = backbone(input_ids=input_ids, cache=cache, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens, step_logits = [token], []
    position = input_ids.shape[1]
    for _ in range(steps):
        captured = {}
        hook = layers[k - 1].register_forward_hook(lambda m, a, o, store=captured: store.setdefault("h", o))
        try:
            backbone(input_ids=token, cache=cache, use_cache=True)
        finally:
            hook.remove()
        h_k = captured["h"][0] if isinstance(captured["h"], tuple) else captured["h"]
        position_ids = torch.tensor([[position]])
        for j in range(k, len(layers)):
            keys, values = _layer_kv(backbone, wrapper, j, h_k, position_ids)
            cache.layers[j].keys[:, :, -1:] = keys
            cache.layers[j].values[:, :, -1:] = values
        logits = _head(backbone, h_k)[:, -1]
        step_logits.append(logits)
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
        position += 1
    return torch.cat([input_ids, *tokens], dim=1), torch.stack(step_logits, 1)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fixed_exit_equals_k_layers_then_the_shared_head(backbone, tokenizer, k):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    ids = tokenizer(["harry potter studied at hogwarts"], return_tensors="pt")["input_ids"]
    # One step after a full-depth prompt: no filled entry is involved yet.
    hidden = _hidden_states(backbone, ids)
    cache = DynamicCache(config=backbone.config)
    model(ids[:, :-1], cache=cache, use_cache=True)
    step = model(ids[:, -1:], cache=cache, use_cache=True, exit_strategy="fixed", fixed_exit_layer=k)
    torch.testing.assert_close(step.logits[:, -1], _head(backbone, hidden[k])[:, -1])
    assert step.exit_layers.tolist() == [[k]]
    # Later steps attend to filled entries: equal to the definition built from the backbone's own layers.
    expected, expected_logits = _fixed_exit_by_definition(backbone, ids, k, steps=5)
    out = model.generate(
        ids, max_new_tokens=6, do_sample=False, exit_strategy="fixed", fixed_exit_layer=k,
        output_logits=True, return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, expected)
    torch.testing.assert_close(torch.stack(out.logits[1:], 1), expected_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", WALKABLE)
def test_fill_equals_what_each_layers_attention_stores(name):
    base = _family(name)
    model = EarlyExitForCausalLM.from_backbone(base).eval()
    torch.manual_seed(0)
    hidden = torch.randn(2, 3, base.config.hidden_size)
    position_ids = torch.tensor([[4, 5, 6]])
    rotary = model._part("rotary_emb")
    embeddings = rotary(hidden, position_ids=position_ids) if rotary is not None else None
    for index in range(base.config.num_hidden_layers):
        cache = DynamicCache(config=base.config)
        model.fill_skipped_layer(index, hidden, embeddings, cache)
        keys, values = _layer_kv(base, model, index, hidden, position_ids)
        torch.testing.assert_close(cache.layers[index].keys, keys)
        torch.testing.assert_close(cache.layers[index].values, values)


def _manual_generation(model, ids, steps, **settings):
    """Greedy decoding through forward(): per-step logits and exit layers."""
    cache = DynamicCache(config=model.config.backbone_config)
    out = model(ids, cache=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    inputs, logits, exits = [token], [], []
    for _ in range(steps):
        out = model(token, cache=cache, use_cache=True, **settings)
        logits.append(out.logits[:, -1])
        exits.append(out.exit_layers[:, -1])
        token = out.logits[:, -1:].argmax(-1)
        inputs.append(token)
    return torch.cat(inputs[:-1], 1), torch.stack(logits, 1), torch.stack(exits, 1)


@pytest.mark.parametrize(
    "strategy, extra",
    [("fixed", dict(fixed_exit_layer=2)), ("confidence", {}), ("patience", dict(patience=2))],
)
def test_training_pass_with_the_same_exits_reproduces_inference(backbone, tokenizer, strategy, extra):
    """The teacher-forced pass with forced exits writes the same keys/values as the inference fill."""
    settings = _settings(backbone, strategy, **extra)
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    ids = tokenizer(["harry potter studied at hogwarts"], return_tensors="pt")["input_ids"]
    generated, step_logits, step_exits = _manual_generation(model, ids, steps=6, **settings)
    assert step_exits.min() < 4  # some token really exited early
    sequence = torch.cat([ids, generated], 1)
    depth = model.config.num_hidden_layers
    forced = torch.cat([torch.full_like(ids, depth), step_exits], 1)
    out = model(sequence, output_all_exits=True, forced_exit_layers=forced)
    torch.testing.assert_close(out.logits[:, ids.shape[1]:], step_logits, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- exit rules


def _step_hidden(backbone, tokenizer):
    ids = tokenizer(["the cat sat on the"], return_tensors="pt")["input_ids"]
    return ids, _hidden_states(backbone, ids)


def _one_step(model, ids, **settings):
    cache = DynamicCache(config=model.config.backbone_config)
    model(ids[:, :-1], cache=cache, use_cache=True)
    return model(ids[:, -1:], cache=cache, use_cache=True, **settings)


def test_confidence_entropy_and_patience_exit_where_their_rule_first_holds(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    ids, hidden = _step_hidden(backbone, tokenizer)
    probs = {k: torch.softmax(_head(backbone, hidden[k])[0, -1], -1) for k in range(1, 5)}
    top = {k: p.max().item() for k, p in probs.items()}
    entropy = {k: -(p * p.log()).sum().item() for k, p in probs.items()}
    argmax = {k: p.argmax().item() for k, p in probs.items()}
    def midpoints(values):
        values = sorted(values)
        return [(a + b) / 2 for a, b in zip(values, values[1:])]

    for threshold in midpoints(top.values()):
        expected = next((k for k in (1, 2, 3) if top[k] > threshold), 4)
        out = _one_step(model, ids, exit_strategy="confidence", confidence_threshold=threshold)
        assert out.exit_layers.item() == expected
    for threshold in midpoints(entropy.values()):
        expected = next((k for k in (1, 2, 3) if entropy[k] < threshold), 4)
        out = _one_step(model, ids, exit_strategy="entropy", entropy_threshold=threshold)
        assert out.exit_layers.item() == expected
    expected = next((k for k in (2, 3) if argmax[k] == argmax[k - 1]), 4)
    assert _one_step(model, ids, exit_strategy="patience", patience=2).exit_layers.item() == expected
    out = _one_step(model, ids, exit_strategy="confidence", confidence_threshold=0.999)
    torch.testing.assert_close(out.logits[0, -1], _head(backbone, hidden[4])[0, -1])


def test_policy_strategy_thresholds_the_policy_and_warns_while_untrained(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    ids, hidden = _step_hidden(backbone, tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():  # spread the exit probabilities
        for parameter in model.early_exit.policy.parameters():
            parameter.normal_(std=0.5)
    probs = {k: model.exit_probability(hidden[k], k)[0, -1].item() for k in (1, 2, 3)}
    ordered = sorted(probs.values())
    thresholds = [(a + b) / 2 for a, b in zip(ordered, ordered[1:])]
    with pytest.warns(UserWarning, match="untrained policy"):
        _one_step(model, ids, exit_strategy="policy")
    for threshold in thresholds:
        expected = next((k for k in (1, 2, 3) if probs[k] > threshold), 4)
        assert _one_step(model, ids, exit_strategy="policy", policy_threshold=threshold).exit_layers.item() == expected
    model.config.policy_trained = True
    model._warned_untrained_policy = False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _one_step(model, ids, exit_strategy="policy")


def test_shortlist_only_delays_exits_and_keeps_the_full_head_decision(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    batch = _batch(tokenizer)
    settings = _settings(backbone, "confidence")
    _, plain_logits, plain_exits = _manual_generation(model, batch["input_ids"][:1], steps=6, **settings)
    model.set_exit_shortlist(list(range(0, len(tokenizer), 2)))
    _, short_logits, short_exits = _manual_generation(model, batch["input_ids"][:1], steps=6, **settings)
    # Until the first step where the shortlist changes a decision, the runs are identical; at that step the
    # shortlist run exits later, never earlier.
    differs = (plain_exits != short_exits).nonzero()
    assert differs.numel(), "this shortlist should change some decision"
    first = differs[0, 1].item()
    assert short_exits[0, first] > plain_exits[0, first]
    torch.testing.assert_close(short_logits[:, :first], plain_logits[:, :first])
    model.set_exit_shortlist(list(range(len(tokenizer))))  # the whole vocabulary: exactly the plain rule
    _, full_logits, full_exits = _manual_generation(model, batch["input_ids"][:1], steps=6, **settings)
    assert torch.equal(full_exits, plain_exits)


@pytest.mark.parametrize("kv_fill", ["state", "deferred"])
def test_shortlist_exits_score_only_the_shortlist_and_decide_on_its_distribution(backbone, tokenizer, kv_fill):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, kv_fill=kv_fill).eval()
    ids, hidden = _step_hidden(backbone, tokenizer)
    shortlist = torch.arange(0, len(tokenizer), 3)
    model.set_exit_shortlist(shortlist)
    outside = torch.ones(backbone.config.vocab_size, dtype=torch.bool)
    outside[shortlist] = False
    # A fixed exit: the shortlist's columns are the full head's, every other token is impossible.
    out = _one_step(model, ids, exit_strategy="fixed", fixed_exit_layer=2, shortlist_exits=True)
    full = _head(backbone, hidden[2])[0, -1]
    assert out.exit_layers.item() == 2
    torch.testing.assert_close(out.logits[0, -1, shortlist], full[shortlist])
    assert torch.isneginf(out.logits[0, -1, outside]).all()
    # The last layer still uses the full head, so any token can come from it.
    out = _one_step(model, ids, exit_strategy="fixed", fixed_exit_layer=4, shortlist_exits=True)
    torch.testing.assert_close(out.logits[0, -1], _head(backbone, hidden[4])[0, -1])
    # Confidence decides on the shortlist's own softmax, with no full-head confirmation.
    top = {k: torch.softmax(_head(backbone, hidden[k])[0, -1, shortlist], -1).max().item() for k in (1, 2, 3)}
    values = sorted(top.values())
    for threshold in [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + (1 - values[-1]) / 2]:
        expected = next((k for k in (1, 2, 3) if top[k] > threshold), 4)
        out = _one_step(model, ids, exit_strategy="confidence", confidence_threshold=threshold, shortlist_exits=True)
        assert out.exit_layers.item() == expected


def test_shortlist_exits_in_generation_and_teacher_forced_passes_agree(backbone, tokenizer):
    """The same decisions and tokens one token at a time (generation) and for every position at once."""
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, kv_fill="deferred").eval()
    model.set_exit_shortlist(torch.arange(0, len(tokenizer), 2))
    settings = dict(_settings(backbone, "confidence"), shortlist_exits=True)
    ids = _batch(tokenizer, PROMPTS[:1])["input_ids"]
    generated, step_logits, step_exits = _manual_generation(model, ids, steps=6, **settings)
    assert step_exits.min() < 4
    chosen = step_logits.argmax(-1)
    shortlist = set(model.early_exit.shortlist.tolist())
    assert all(t in shortlist for t, k in zip(chosen[0].tolist(), step_exits[0].tolist()) if k < 4)
    cache = DynamicCache(config=model.config.backbone_config)
    model(ids, cache=cache, use_cache=True)
    forced = model(generated, cache=cache, use_cache=True, exit_all_positions=True, **settings)
    assert torch.equal(forced.exit_layers, step_exits)
    assert torch.equal(forced.logits.argmax(-1), chosen)


def test_shortlist_exits_need_a_shortlist(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    ids, _ = _step_hidden(backbone, tokenizer)
    with pytest.raises(ValueError, match=r"shortlist_exits=True needs a token shortlist: set one with"):
        _one_step(model, ids, exit_strategy="fixed", fixed_exit_layer=2, shortlist_exits=True)
    with pytest.raises(ValueError, match=r"shortlist_exits=True needs a token shortlist"):
        model.set_exit_strategy("fixed", fixed_exit_layer=2, shortlist_exits=True)
    model.set_exit_shortlist([5, 6, 7])
    model.set_exit_strategy("fixed", fixed_exit_layer=2, shortlist_exits=True)
    out = _one_step(model, ids)
    assert out.logits[0, -1].isfinite().nonzero().flatten().tolist() == [5, 6, 7]


# ---------------------------------------------------------------------------------------------- batching, stats


@pytest.mark.parametrize(
    "strategy, extra",
    [("confidence", {}), ("entropy", {}), ("patience", dict(patience=2)), ("fixed", dict(fixed_exit_layer=2))],
)
def test_batched_generation_equals_each_row_alone(backbone, tokenizer, strategy, extra):
    settings = _settings(backbone, strategy, **extra)
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id, **settings)
    model.exit_stats.reset()
    batched = model.generate(**_batch(tokenizer), **kwargs)
    assert 1 < model.exit_stats.mean_exit_layer < 4 or settings["exit_strategy"] == "fixed"
    for row, text in enumerate(PROMPTS):
        alone = model.generate(**_batch(tokenizer, [text]), **kwargs)
        new = alone.shape[1] - 8
        assert torch.equal(batched[row, -8:], alone[0, new:]), (row, settings)


def _random_policy(backbone, tokenizer):
    """A model whose (trained-marked) policy has spread exit probabilities; the step's ids and those probabilities."""
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, policy_trained=True).eval()
    ids, hidden = _step_hidden(backbone, tokenizer)
    with torch.no_grad():
        for parameter in model.early_exit.policy.parameters():
            parameter.normal_(std=0.5)
        probs = {k: model.exit_probability(hidden[k], k)[0, -1].item() for k in (1, 2, 3)}
    return model, ids, probs


def test_checked_exits_restrict_where_the_policy_decides(backbone, tokenizer):
    model, ids, probs = _random_policy(backbone, tokenizer)
    asked = []
    hook = model.early_exit.policy.register_forward_pre_hook(lambda m, args: asked.append(args[1]))
    try:
        for checked in ([2], [1, 3], []):
            for threshold in (0.05, 0.5, 0.95):
                asked.clear()
                out = _one_step(model, ids, exit_strategy="policy", policy_threshold=threshold, checked_exits=checked)
                expected = next((k for k in checked if probs[k] > threshold), 4)
                assert out.exit_layers.item() == expected
                # The policy ran at the checked exits up to the one taken, nowhere else.
                assert asked == [model._exit_index[k] for k in checked if k <= expected]
    finally:
        hook.remove()
    with pytest.raises(ValueError, match=r"checked_exits must be a subset of the internal exit layers \[1, 2, 3\]"):
        _one_step(model, ids, exit_strategy="policy", checked_exits=[2, 4])


def test_checked_exit_selection_weighs_checks_against_layers_saved():
    from hf_unlearn.early_exit.calibration import choose_checked_exits, expected_cost

    # Exits after layers 1, 2, 3 of 4; the strategy would stop tokens 0 and 2 at exit 2, never at exits 1 and 3.
    decisions = torch.tensor([[False, False, False, False], [True, False, True, False], [False] * 4])
    # By hand: checking all three, tokens 0 and 2 run 2 layers + 2 checks, tokens 1 and 3 run 4 layers + 3 checks.
    assert expected_cost(decisions, [1, 2, 3], 4, 0.25) == pytest.approx((2 * 2.5 + 2 * 4.75) / 4)
    assert expected_cost(decisions[1:2], [2], 4, 0.25) == pytest.approx((2.25 + 4.25) / 2)
    assert choose_checked_exits(decisions, [1, 2, 3], 4, check_cost=0.25) == [2]
    assert choose_checked_exits(decisions, [1, 2, 3], 4, check_cost=0.0) == [1, 2, 3]  # checks are free
    assert choose_checked_exits(decisions, [1, 2, 3], 4, check_cost=10.0) == []  # no exit pays for its checks


def test_per_exit_policy_thresholds_decide_where_given(backbone, tokenizer):
    model, ids, probs = _random_policy(backbone, tokenizer)
    for thresholds in ({2: 0.05}, {1: 0.99, 3: 0.01}, {1: (probs[1] + 1) / 2, 2: probs[2] / 2}, {3: 0.99}):
        out = _one_step(model, ids, exit_strategy="policy", policy_threshold=0.01, policy_thresholds=thresholds)
        expected = next((k for k in sorted(thresholds) if probs[k] > thresholds[k]), 4)
        assert out.exit_layers.item() == expected, thresholds
    with pytest.raises(ValueError, match="policy_thresholds' keys must be internal exit layers"):
        _one_step(model, ids, exit_strategy="policy", policy_thresholds={4: 0.5})
    with pytest.raises(ValueError, match="values must be probabilities"):
        _one_step(model, ids, exit_strategy="policy", policy_thresholds={2: 1.5})
    model.exit_stats.reset()  # through generate, batched: only the given exits decide
    model.generate(**_batch(tokenizer), max_new_tokens=4, do_sample=False, exit_strategy="policy",
                   policy_thresholds={2: 0.3})
    assert set(model.exit_stats.as_dict()["histogram"]) <= {2, 4}
    # Saved as JSON (string keys) and loaded back as exit layers.
    config = EarlyExitConfig.from_dict({**model.config.to_dict(), "policy_thresholds": {"2": 0.3}})
    assert config.policy_thresholds == {2: 0.3}


def test_fitted_policy_thresholds_reach_the_target_at_the_lowest_cost():
    from hf_unlearn.early_exit.calibration import exit_outcome, fit_policy_thresholds

    # Exits after layers 1 and 2 of 4; four tokens. Exit 1 is right for tokens 0 and 1 with probabilities 0.9 and
    # 0.6, wrong for token 2 at 0.7; exit 2 is right for every token, at 0.8 for token 3.
    probs = torch.tensor([[0.9, 0.6, 0.7, 0.1], [0.5, 0.5, 0.5, 0.8]])
    correct = torch.tensor([[True, True, False, False], [True, True, True, True]])
    # By hand: exit 1 at 0.65 takes tokens 0 and 2 (one wrong): agreement 3/4 at (1 + 1 + 4 + 4) / 4 layers.
    decisions = probs[:1] > 0.65
    assert exit_outcome(decisions, [1], 4, 0.0, correct[:1]) == pytest.approx((2.5, 0.75))
    # Full agreement: exit 1 above 0.7 (token 0 only) and exit 2 above 0.5 (token 3).
    assert fit_policy_thresholds(probs, correct, [1, 2], 4, 1.0, 0.0, grid=(0.55, 0.65, 0.75)) == {1: 0.75, 2: 0.55}
    # Three in four is enough: exit 1 at 0.55 takes tokens 0, 1 and 2 (cost 1.75 layers), exit 2 then only token 3.
    assert fit_policy_thresholds(probs, correct, [1, 2], 4, 0.75, 0.0, grid=(0.55, 0.65, 0.75)) == {1: 0.55, 2: 0.55}
    # When checks cost more than they save, none.
    assert fit_policy_thresholds(probs, correct, [1, 2], 4, 0.75, 10.0, grid=(0.55, 0.65, 0.75)) == {}


def test_fitted_policy_thresholds_reach_a_policy_with_low_exit_probabilities():
    from hf_unlearn.early_exit.calibration import THRESHOLD_GRID, exit_outcome, fit_policy_thresholds, quantile_grid

    # A policy that separates perfectly, below the fixed grid: exit 1 (of 4 layers) is right for the 60 tokens where
    # it says 0.05-0.1 and wrong for the 40 where it says 0.01.
    probs = torch.cat([torch.linspace(0.05, 0.1, 60), torch.full((40,), 0.01)]).unsqueeze(0)
    correct = torch.cat([torch.ones(60, dtype=torch.bool), torch.zeros(40, dtype=torch.bool)]).unsqueeze(0)
    assert fit_policy_thresholds(probs, correct, [1], 4, 1.0, 0.1, grid=THRESHOLD_GRID) == {}
    thresholds = fit_policy_thresholds(probs, correct, [1], 4, 1.0, 0.1)
    assert 0.01 <= thresholds[1] < 0.05
    # By hand: 60 tokens at layer 1, 40 at layer 4, each paying one check of 0.1 layers.
    cost, agreement = exit_outcome(probs > thresholds[1], [1], 4, 0.1, correct)
    assert (cost, agreement) == pytest.approx(((60 * 1 + 40 * 4) / 100 + 0.1, 1.0))
    # Saturated and tiny probabilities still give thresholds that policy_thresholds accepts, in (0, 1).
    grid = quantile_grid(torch.tensor([[0.0] * 30 + [0.00042] * 30 + [1.0] * 40]))
    assert grid == (0.00042,)


def test_select_checked_exits_on_a_model(backbone, tokenizer):
    from hf_unlearn.early_exit import calibrate_policy_thresholds, select_checked_exits

    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    settings = _settings(backbone, "confidence")
    texts = [("the cat sat", " on the mat"), "harry potter studied at hogwarts"]
    assert select_checked_exits(model, tokenizer, texts, check_cost=0.0, **settings) == [1, 2, 3]
    assert select_checked_exits(model, tokenizer, texts, check_cost=100.0, **settings) == []
    checked = select_checked_exits(model, tokenizer, texts, check_cost=0.5, **settings)
    assert set(checked) <= {1, 2, 3}
    model.exit_stats.reset()
    model.generate(**_batch(tokenizer), max_new_tokens=5, do_sample=False, checked_exits=checked, **settings)
    assert set(model.exit_stats.as_dict()["histogram"]) <= {*checked, 4}
    thresholds = calibrate_policy_thresholds(model, tokenizer, texts, target_agreement=0.9, check_cost=0.0)
    assert set(thresholds) <= {1, 2, 3} and all(0 < t < 1 for t in thresholds.values())
    with pytest.raises(ValueError, match="target_agreement"):
        calibrate_policy_thresholds(model, tokenizer, texts, target_agreement=1.5)
    with pytest.raises(ValueError, match="no answer tokens"):
        calibrate_policy_thresholds(model, tokenizer, [("the cat sat", "")])
    with pytest.raises(ValueError, match="select_checked_exits weighs per-exit decisions"):
        select_checked_exits(model, tokenizer, texts, exit_strategy="patience")
    with pytest.raises(ValueError, match="texts is empty"):
        select_checked_exits(model, tokenizer, [], **settings)


def test_calibration_weighs_the_full_head_and_scores_shortlist_exits(backbone, tokenizer):
    from hf_unlearn.early_exit import calibrate_policy_thresholds, select_checked_exits

    model, _, _ = _random_policy(backbone, tokenizer)
    texts = [("the cat sat", " on the mat"), "harry potter studied at hogwarts", "the capital city of france is"]
    settings = _settings(backbone, "confidence")
    # Checks that cost 3 of 4 layers do not pay for themselves, unless the full head that an exit skips is costly.
    assert select_checked_exits(model, tokenizer, texts, check_cost=3.0, **settings) == []
    assert select_checked_exits(model, tokenizer, texts, check_cost=3.0, head_cost=100.0, **settings) != []
    with pytest.raises(ValueError, match="head_cost is a time in decoder layers"):
        select_checked_exits(model, tokenizer, texts, head_cost=-1.0, **settings)
    # The whole vocabulary as shortlist: the same agreement, so the same thresholds.
    plain = calibrate_policy_thresholds(model, tokenizer, texts, target_agreement=0.8, check_cost=0.0)
    model.set_exit_shortlist(list(range(len(tokenizer))))
    assert calibrate_policy_thresholds(model, tokenizer, texts, target_agreement=0.8, check_cost=0.0,
                                       shortlist_exits=True) == plain
    # A shortlist without any token the full model predicts: no shortlist exit can agree, so none is checked.
    predicted = set()
    for text in texts:
        ids = tokenizer("".join(text), return_tensors="pt")["input_ids"]
        predicted |= set(model(ids, exit_strategy="none").logits[0].argmax(-1).tolist())
    model.set_exit_shortlist([t for t in range(len(tokenizer)) if t not in predicted])
    assert calibrate_policy_thresholds(model, tokenizer, texts, target_agreement=1.0, check_cost=0.0,
                                       shortlist_exits=True) == {}
    assert calibrate_policy_thresholds(model, tokenizer, texts, target_agreement=1.0, check_cost=0.0) != {}


def test_exit_statistics_count_decided_tokens_and_reset(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    model.exit_stats.reset()
    model.generate(**_batch(tokenizer), max_new_tokens=5, do_sample=False, exit_strategy="fixed", fixed_exit_layer=3)
    stats = model.exit_stats
    assert stats.tokens == 3 * 4  # the first token of each row comes from the full-depth prompt pass
    assert stats.mean_exit_layer == 3.0
    assert stats.layers_saved == pytest.approx(0.25)
    assert stats.as_dict()["histogram"] == {3: 12}
    stats.reset()
    assert stats.tokens == 0


def test_computation_stops_at_the_exit(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    calls = [0] * 4
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(model._layers())
    ]
    fills = []
    original = model.fill_skipped_layer
    model.fill_skipped_layer = lambda index, *a: (fills.append(index), original(index, *a))
    try:
        model.generate(**_batch(tokenizer, PROMPTS[:1]), max_new_tokens=5, do_sample=False,
                       exit_strategy="fixed", fixed_exit_layer=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [5, 5, 1, 1]  # prompt + 4 decode steps for the first two layers, the prompt only after
    assert sorted(fills) == [2] * 4 + [3] * 4


@pytest.mark.parametrize("strategy, extra", [("confidence", {}), ("patience", {"patience": 2})])
def test_deferred_fill_generates_what_the_exact_cache_generates(backbone, tokenizer, strategy, extra):
    settings = _settings(backbone, strategy, **extra)
    ids = tokenizer(["harry potter studied at hogwarts"], return_tensors="pt")["input_ids"]
    outputs, exits = {}, {}
    for fill in ("compute", "deferred", "state"):
        model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, kv_fill=fill).eval()
        out = model.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **settings)
        outputs[fill], exits[fill] = out, model.exit_stats.mean_exit_layer
        if fill == "deferred":  # the lossless mode (which always defers its drafts' layers) equals the full model
            full = backbone.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                     eos_token_id=[], pad_token_id=0)
            lossless = model.generate_lossless(ids, max_new_tokens=8, eos_token_id=[], **settings)
            assert torch.equal(lossless.sequences, full)
    assert exits["deferred"] < 4  # tokens really exited early
    assert torch.equal(outputs["deferred"].sequences, outputs["compute"].sequences)
    torch.testing.assert_close(torch.stack(outputs["deferred"].logits), torch.stack(outputs["compute"].logits),
                               rtol=1e-4, atol=1e-4)
    # ... which the approximate fill does not: tokens after an early exit attend to other keys and values (on the
    # trained Llama, whose exits vary from token to token here; the GPT-2 tokens all exit at one layer).
    state, exact = torch.stack(outputs["state"].logits), torch.stack(outputs["compute"].logits)
    assert backbone.config.model_type != "llama" or not torch.allclose(state, exact, rtol=1e-4, atol=1e-4)


def test_deferred_fill_runs_skipped_layers_with_the_next_token_that_needs_them(backbone, tokenizer):
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    steps = [dict(exit_strategy="fixed", fixed_exit_layer=2)] * 2 + [dict(exit_strategy="none")]
    logits = {}
    for fill in ("deferred", "compute"):
        model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, kv_fill=fill).eval()
        lengths: list[list[int]] = [[] for _ in range(4)]
        hooks = [
            layer.register_forward_pre_hook(lambda m, a, i=i, seen=lengths: seen[i].append(a[0].shape[1]))
            for i, layer in enumerate(model._layers())
        ]
        fills: list[int] = []
        model.fill_skipped_layer = lambda index, *a, seen=fills, run=model.fill_skipped_layer: (
            seen.append(index), run(index, *a)
        )
        cache = DynamicCache(config=backbone.config)
        try:
            token = model(ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            for settings in steps:
                out = model(token, cache=cache, use_cache=True, **settings)
                token = out.logits[:, -1:].argmax(-1)
        finally:
            for hook in hooks:
                hook.remove()
        logits[fill] = out.logits
        if fill == "deferred":
            prompt = ids.shape[1]
            assert lengths[0] == lengths[1] == [prompt, 1, 1, 1]
            # Two tokens exited at layer 2; their layers 3-4 ran with the full-depth token, in one call each.
            assert lengths[2] == lengths[3] == [prompt, 3]
            assert not fills and cache.layers[3].keys.shape[-2] == prompt + 3
    torch.testing.assert_close(logits["deferred"], logits["compute"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pending in this cache"):
        model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, kv_fill="deferred").eval()
        cache = DynamicCache(config=backbone.config)
        model(ids, cache=cache, use_cache=True)
        model(ids[:, -1:], cache=cache, use_cache=True, exit_strategy="fixed", fixed_exit_layer=2)
        model(ids[:, :2], cache=cache, use_cache=True)


def test_all_exits_pass_matches_the_backbone_hidden_states(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, exit_head="adapter")
    batch = tokenizer(["harry potter studied at hogwarts castle ."], return_tensors="pt")
    labels = batch["input_ids"]
    assert model.train()(**batch, labels=labels).exit_losses is not None  # the default in training mode
    out = model.eval()(**batch, labels=labels, output_all_exits=True)  # without dropout, to compare
    assert out.exit_losses.shape == (4, 1, labels.shape[1] - 1)
    assert out.policy_probs.shape == (3, 1, labels.shape[1])
    hidden = _hidden_states(backbone, batch["input_ids"])
    for i, k in enumerate(model.config.all_exits):
        logits = _head(backbone, hidden[k])[0, :-1]
        expected = torch.nn.functional.cross_entropy(logits, labels[0, 1:], reduction="none")
        torch.testing.assert_close(out.exit_losses[i, 0], expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(out.exit_correct[i, 0], logits.argmax(-1) == labels[0, 1:])
    torch.testing.assert_close(out.loss, out.exit_losses.mean())
    out.loss.backward()  # checkpointed heads: gradients reach the backbone and the adapters
    adapter = model.early_exit.adapters[0].up.weight.grad
    assert adapter is not None and adapter.abs().sum() > 0
    no_logits = model(**batch, output_all_exits=True)
    assert len(no_logits.exit_logits) == 4


def test_translator_head_starts_as_the_shared_head_and_adds_a_full_rank_map(backbone, tokenizer):
    shared = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, exit_head="shared").eval()
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, exit_head="translator").eval()
    batch = _batch(tokenizer)
    hidden = _hidden_states(backbone, batch["input_ids"])
    torch.testing.assert_close(model.exit_logits(hidden[2], 2), shared.exit_logits(hidden[2], 2), rtol=0, atol=0)
    adapter = model.early_exit.adapters[model._exit_index[2]]
    assert adapter.linear.weight.shape == (backbone.config.hidden_size,) * 2
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(std=0.1)
        h = hidden[2]
        bottleneck = torch.nn.functional.silu(h @ adapter.down.weight.T) @ adapter.up.weight.T
        moved = h + bottleneck + h @ adapter.linear.weight.T
        expected = _head(backbone, moved)
    torch.testing.assert_close(model.exit_logits(h, 2), expected)


# ---------------------------------------------------------------------------------------------- saving, PEFT


@pytest.mark.parametrize("exit_head", ["adapter", "translator"])
def test_save_and_load_round_trip_with_auto_classes(backbone, tokenizer, tmp_path, exit_head):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=2, exit_head=exit_head).eval()
    with torch.no_grad():
        for p in model.early_exit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.set_exit_shortlist([3, 4, 5, 9])
    model.set_exit_strategy("entropy", entropy_threshold=3.5)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_early_exit.EarlyExitConfig",
        "AutoModelForCausalLM": "modeling_early_exit.EarlyExitForCausalLM",
    }
    assert (tmp_path / "modeling_early_exit.py").exists() and (tmp_path / "configuration_early_exit.py").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is EarlyExitForCausalLM and loaded.config.exit_strategy == "entropy"
    batch = _batch(tokenizer)
    for settings in ({}, {"exit_strategy": "none"}, {"exit_strategy": "policy"}):
        torch.testing.assert_close(
            loaded(**batch, exit_all_positions=True, **settings).logits,
            model(**batch, exit_all_positions=True, **settings).logits,
            rtol=0, atol=0,
        )


REMOTE = textwrap.dedent(
    """
    import sys, json, torch
    sys.modules["hf_unlearn"] = None  # as in a process where hf_unlearn is not installed
    from transformers import AutoModelForCausalLM
    path, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    assert "hf_unlearn" not in type(model).__module__, type(model).__module__
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    logits = model(ids, exit_all_positions=True).logits
    print(json.dumps({"tokens": out.tolist(), "logits": logits.flatten().tolist()[:50]}))
    """
)


def test_remote_code_loads_without_hf_unlearn(backbone, tokenizer, tmp_path):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, exit_head="adapter",
                                               exit_strategy="confidence", confidence_threshold=0.06).eval()
    model.save_pretrained(tmp_path / "ckpt")
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, str(tmp_path / "ckpt"), json.dumps(ids.tolist())],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["tokens"] == model.generate(ids, max_new_tokens=5, do_sample=False).tolist()
    expected = model(ids, exit_all_positions=True).logits.flatten()[:50]
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected)


def test_lora_on_the_backbone_is_used_by_layers_and_fill(tokenizer):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(tokenizer, layers=4, seed=2)
    model = EarlyExitForCausalLM.from_backbone(base, min_exit_layer=1)
    lora = LoraConfig(r=4, target_modules=["k_proj", "v_proj", "q_proj"], init_lora_weights=False,
                      modules_to_save=["early_exit"])
    peft_model = get_peft_model(model, lora).eval()
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    kwargs = dict(max_new_tokens=6, do_sample=False, exit_strategy="fixed", fixed_exit_layer=2,
                  output_logits=True, return_dict_in_generate=True)
    with_lora = peft_model.generate(input_ids=ids, **kwargs)
    with peft_model.disable_adapter():
        without = peft_model.generate(input_ids=ids, **kwargs)
    assert not torch.allclose(torch.stack(with_lora.logits), torch.stack(without.logits))
    merged = peft_model.merge_and_unload()
    again = merged.generate(input_ids=ids, **kwargs)
    assert torch.equal(again.sequences, with_lora.sequences)
    torch.testing.assert_close(torch.stack(again.logits), torch.stack(with_lora.logits), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error(backbone, tokenizer):
    with pytest.raises(ValueError, match="does not support model_type='gpt_neox'.*Supported"):
        EarlyExitForCausalLM.from_backbone(_family("gpt_neox"))
    with pytest.raises(ValueError, match=r"exit_layers \[0, 9\] are out of range.*1..4"):
        EarlyExitForCausalLM.from_backbone(backbone, exit_layers=[0, 2, 9])
    with pytest.raises(ValueError, match="exit_strategy='fast' is unknown"):
        EarlyExitForCausalLM.from_backbone(backbone, exit_strategy="fast")
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=2).eval()
    with pytest.raises(ValueError, match=r"confidence_threshold must be a probability in \(0, 1\)"):
        model.set_exit_strategy("confidence", confidence_threshold=1.5)
    with pytest.raises(ValueError, match="fixed_exit_layer set to one of the exit layers"):
        model.set_exit_strategy("fixed", fixed_exit_layer=1)
    with pytest.raises(ValueError, match="patience must be a whole number"):
        model(torch.tensor([[3]]), exit_strategy="patience", patience=0)
    with pytest.raises(ValueError, match="entropy_threshold must be > 0"):
        model.set_exit_strategy("entropy", entropy_threshold=0)
    with pytest.raises(ValueError, match="not a PeftModel"):
        from peft import LoraConfig, get_peft_model

        EarlyExitForCausalLM.from_backbone(get_peft_model(backbone, LoraConfig(target_modules=["c_attn", "q_proj"])))
    with pytest.raises(ValueError, match="forced_exit_layers must hold exit layers only"):
        model(torch.tensor([[3, 4]]), output_all_exits=True, forced_exit_layers=torch.tensor([[1, 4]]))
    with pytest.raises(ValueError, match="shortlist token ids"):
        model.set_exit_shortlist([10**6])
    config = EarlyExitConfig(backbone_config=backbone.config)
    config.backbone_layout = None
    with pytest.raises(ValueError, match="backbone_layout is missing"):
        EarlyExitForCausalLM(config)


def test_module_files_import_nothing_from_hf_unlearn_at_top_level():
    import ast

    folder = Path(__file__).resolve().parents[1] / "hf_unlearn" / "early_exit"
    for name in ("modeling_early_exit.py", "configuration_early_exit.py"):
        tree = ast.parse((folder / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("hf_unlearn"), (name, node.module)


def test_token_shortlist_ranks_by_frequency_and_keeps_special_tokens(tokenizer):
    from hf_unlearn.early_exit import token_shortlist

    texts = ["the cat sat on the mat", "the dog ran", "the cat"]
    ids = token_shortlist(tokenizer, texts, size=len(tokenizer.all_special_ids) + 2)
    words = {tokenizer.convert_ids_to_tokens(i) for i in ids}
    assert {"the", "cat"} <= words and set(tokenizer.all_special_tokens) <= words
    assert "dog" not in words and ids == sorted(ids)
    padded = token_shortlist(tokenizer, texts, size=40)  # more than the texts hold: topped up with the lowest ids
    assert len(padded) == 40 and set(ids) <= set(padded)
    with pytest.raises(ValueError, match="texts must be strings"):
        token_shortlist(tokenizer, [["the"]], size=4)


def test_policy_with_confidence_features(backbone, tokenizer):
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, policy_features="hidden+confidence").eval()
    hidden = torch.randn(2, 3, backbone.config.hidden_size if hasattr(backbone.config, "hidden_size") else 32)
    with pytest.raises(ValueError, match="computes the exit's confidence over the token shortlist"):
        model.exit_probability(hidden, 1)
    model.set_exit_shortlist(list(range(len(tokenizer))))
    probs = model.exit_probability(hidden, 1)
    assert probs.shape == (2, 3) and torch.all((probs > 0) & (probs < 1))
    # The features reach the policy: changing only the confidence inputs changes the probability.
    with torch.no_grad():
        model.early_exit.policy.proj.weight[:, -3:].fill_(5.0)
    assert not torch.allclose(model.exit_probability(hidden, 1), probs)
    with pytest.raises(ValueError, match="policy_features='logits' is unknown"):
        EarlyExitForCausalLM.from_backbone(backbone, policy_features="logits")
