"""Early-exit training: the pure objective functions against loops, the trainers end to end, ConsistentEE's
easy/hard behaviour on a synthetic task."""

from __future__ import annotations

import math
import random

import pytest
import torch
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, run_config
from transformers import LlamaConfig, LlamaForCausalLM

from hf_unlearn import (
    ConsistentEEConfig,
    ConsistentEETrainer,
    EarlyExitForCausalLM,
    EarlyExitTrainer,
    EarlyExitTrainingConfig,
    add_memorized_layers,
    losses,
)
from hf_unlearn.trainers.consistentee import MEMORIZED_COLUMN

# ---------------------------------------------------------------------------------------------- pure functions


def test_memorized_layers_match_the_definition():
    torch.manual_seed(0)
    exits = [2, 3, 5, 8]
    correct = torch.rand(4, 3, 7) < 0.7
    got = losses.memorized_layers(correct, exits)
    for b in range(3):
        for t in range(7):
            column = correct[:, b, t].tolist()
            if not column[-1]:
                expected = 8
            else:
                expected = min(exits[j] for j in range(4) if all(column[j:]))
            assert got[b, t].item() == expected


def test_rewards_and_reinforce_loss_match_hand_computation():
    ce = torch.tensor([[0.5, 2.0], [1.0, 0.1]])
    exit_layers = torch.tensor([[2, 4], [3, 1]])
    memorized = torch.tensor([[1, 4], [2, 2]])
    rewards = losses.consistentee_rewards(ce, exit_layers, memorized, num_layers=4, cost_coefficient=0.1)
    expected = [[-0.5 - 0.1 * 0.75 * 2, -2.0 - 0.1 * 0.0 * 4], [-1.0 - 0.1 * 0.5 * 3, -0.1 - 0.1 * 0.5 * 1]]
    torch.testing.assert_close(rewards, torch.tensor(expected))
    log_shape = losses.consistentee_rewards(ce, exit_layers, memorized, 4, 0.1, cost_shape="log")
    torch.testing.assert_close(log_shape[0, 0], torch.tensor(-0.5 - 0.1 * 0.75 * math.log(2)))

    # K = 3 rollouts of 2 tokens; the second token is not scored.
    r = torch.tensor([[1.0, 5.0], [2.0, 6.0], [6.0, 7.0]])
    logp = torch.tensor([[-0.1, -1.0], [-0.2, -2.0], [-0.3, -3.0]], requires_grad=True)
    mask = torch.tensor([[True, False]] * 3)
    loss = losses.reinforce_loss(r, logp, mask, baseline="mean")
    mean = (1 + 2 + 6) / 3
    manual = -sum((r[k, 0].item() - mean) * logp[k, 0].item() for k in range(3)) / (1 * 3)
    assert loss.item() == pytest.approx(manual)
    loo = losses.reinforce_loss(r, logp, mask, baseline="leave_one_out")
    manual = -sum((r[k, 0].item() - (9 - r[k, 0].item()) / 2) * logp[k, 0].item() for k in range(3)) / 3
    assert loo.item() == pytest.approx(manual)
    loss.backward()  # the advantage is a constant: the gradient is -(R - b) / (N K) on each log-prob
    torch.testing.assert_close(logp.grad[:, 0], -(r[:, 0] - mean) / 3)
    assert torch.all(logp.grad[:, 1] == 0)


def test_policy_warmup_loss_matches_hand_computation():
    # 2 internal exits (layers 2 and 3) x 3 tokens; memorized layers 2, 3 and 4 (the last: never by an internal exit).
    probs = torch.tensor([[0.9, 0.2, 0.3], [0.6, 0.7, 0.1]], requires_grad=True)
    memorized = torch.tensor([2, 3, 4])
    mask = torch.tensor([True, True, False])
    loss = losses.policy_warmup_loss(probs, [2, 3], memorized, mask)
    # targets: exit 2 -> [1, 0, 0]; exit 3 -> [1, 1, 0]; the third token is not scored.
    manual = -(math.log(0.9) + math.log(1 - 0.2) + math.log(0.6) + math.log(0.7)) / 2
    assert loss.item() == pytest.approx(manual, rel=1e-5)
    assert losses.policy_warmup_loss(probs, [2, 3], memorized, mask, num_items=4).item() == pytest.approx(
        manual / 2, rel=1e-5)
    loss.backward()
    assert torch.all(probs.grad[:, 2] == 0)
    with pytest.raises(ValueError, match="2 exits, exit_layers 3"):
        losses.policy_warmup_loss(probs, [1, 2, 3], memorized, mask)


def test_exit_weights_and_multi_exit_loss():
    torch.testing.assert_close(losses.exit_layer_weights([1, 2, 3], "depth"), torch.tensor([1, 2, 3]) / 6.0)
    torch.testing.assert_close(losses.exit_layer_weights([1, 2], "uniform"), torch.tensor([0.5, 0.5]))
    token_losses = torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]]])
    loss = losses.early_exit_loss(token_losses, torch.tensor([0.25, 0.75]), num_items=2)
    assert loss.item() == pytest.approx((0.25 * 4 + 0.75 * 2) / 2)
    with pytest.raises(ValueError, match="weighting 'log' is unknown"):
        losses.exit_layer_weights([1], "log")


# ---------------------------------------------------------------------------------------------- model passes


@pytest.fixture
def wrapped(tokenizer, trained_tiny):
    return EarlyExitForCausalLM.from_backbone(trained_tiny(tokenizer, "llama", steps=60, layers=4), min_exit_layer=1)


def test_sampled_exits_are_stochastic_and_follow_the_policy(wrapped, tokenizer):
    """Training samples actions from the policy; inference thresholds it."""
    with torch.no_grad():
        for p in wrapped.early_exit.policy.parameters():
            p.zero_()
        wrapped.early_exit.policy.out.bias.fill_(math.log(0.6 / 0.4))  # p = 0.6 at every exit
    batch = tokenizer(FORGET_TEXTS * 8, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = wrapped(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100),
                  output_all_exits=True, sample_exits=True)
    deciding = out.exit_log_probs != 0
    layers = out.exit_layers[deciding].float()
    shares = [(layers == k).float().mean().item() for k in (1, 2, 3, 4)]
    expected = [0.6, 0.4 * 0.6, 0.4**2 * 0.6, 0.4**3]
    assert shares == pytest.approx(expected, abs=0.08)
    # log P(e) = log p_e + sum_{j<e} log(1 - p_j), no policy term for the forced last exit
    expected_log = {1: math.log(0.6), 2: math.log(0.4 * 0.6), 3: math.log(0.4**2 * 0.6), 4: math.log(0.4**3)}
    for k, value in expected_log.items():
        torch.testing.assert_close(out.exit_log_probs[deciding & (out.exit_layers == k)],
                                   torch.full_like(layers[layers == k], value), rtol=1e-4, atol=1e-4)
    torch.manual_seed(1)
    again = wrapped(**batch, labels=batch["input_ids"], output_all_exits=True, sample_exits=True)
    assert not torch.equal(again.exit_layers, out.exit_layers)
    wrapped.config.policy_trained = True
    inference = wrapped.eval()(**batch, exit_all_positions=True, exit_strategy="policy", policy_threshold=0.5)
    real = batch["attention_mask"].bool()
    assert torch.all(inference.exit_layers[real] == 1)


def test_exit_losses_of_sampled_exits_score_the_next_token(wrapped, tokenizer):
    """Each position's loss is its own exit's cross-entropy for label t + 1 (the released code pairs them off by
    one)."""
    batch = tokenizer(FORGET_TEXTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = wrapped(**batch, labels=labels, output_all_exits=True, sample_exits=True)
        forced = wrapped(**batch, output_all_exits=True, forced_exit_layers=sampled.exit_layers)
    assert len(set(sampled.exit_layers[batch["attention_mask"].bool()].tolist())) > 1
    log_probs = torch.log_softmax(forced.logits[:, :-1].float(), -1)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] == -100:
                assert sampled.exit_token_losses[b, t] == 0
                continue
            expected = -log_probs[b, t, labels[b, t + 1]]
            torch.testing.assert_close(sampled.exit_token_losses[b, t], expected, rtol=1e-5, atol=1e-5)


def test_prompt_positions_run_at_full_depth_when_sampling(wrapped, tokenizer):
    batch = tokenizer(["who is harry potter ?"], return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[:, :4] = -100  # prompt "who is harry potter", completion "?"
    out = wrapped(**batch, labels=labels, output_all_exits=True, sample_exits=True)
    assert torch.all(out.exit_layers[0, :4] == 4) and torch.all(out.exit_log_probs[0, :4] == 0)


# ---------------------------------------------------------------------------------------------- trainers


def test_early_exit_trainer_trains_adapters_and_leaves_the_backbone(tokenizer, trained_tiny, tmp_path):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    args = run_config(EarlyExitTrainingConfig, tmp_path, max_steps=25, learning_rate=3e-2,
                      early_exit_kwargs={"min_exit_layer": 1})
    trainer = EarlyExitTrainer(backbone, args, train_dataset=FORGET_TEXTS + RETAIN_TEXTS, processing_class=tokenizer)
    first = trainer.evaluate(trainer.train_dataset)
    trainer.train()
    last = trainer.evaluate(trainer.train_dataset)
    assert last["eval_loss"] < 0.95 * first["eval_loss"]
    model = trainer.model
    assert isinstance(model, EarlyExitForCausalLM)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert model.early_exit.adapters[0].up.weight.abs().sum() > 0
    logged = trainer.state.log_history[0]
    assert {"exit_accuracy_1", "exit_loss_3", "oracle_exit_layer", "oracle_exit_frac_2"} <= set(logged)


def test_self_distillation_targets_the_full_model(tokenizer, trained_tiny, tmp_path):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    args = run_config(EarlyExitTrainingConfig, tmp_path, max_steps=1, self_distillation=True,
                      early_exit_kwargs={"min_exit_layer": 1})
    trainer = EarlyExitTrainer(backbone, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], exit_strategy="none")
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_all_exits=True)
    target = torch.softmax(full.logits[:, :-1], -1)
    mask = batch["labels"][:, 1:] != -100
    weights = losses.exit_layer_weights([1, 2, 3], "depth")
    expected = 0.0
    for i in range(3):
        ce = -(target * torch.log_softmax(out.exit_logits[i][:, :-1], -1)).sum(-1)
        expected += weights[i] * (ce * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected.float(), rtol=1e-4, atol=1e-5)


def test_lora_backbone_under_the_early_exit_loss(tokenizer, trained_tiny, tmp_path):
    from peft import LoraConfig

    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    args = run_config(EarlyExitTrainingConfig, tmp_path, max_steps=3, learning_rate=1e-2, self_distillation=True,
                      early_exit_kwargs={"min_exit_layer": 1})
    trainer = EarlyExitTrainer(backbone, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer,
                               peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("adapters" in n for n in trainable)
    assert not any("policy" in n for n in trainable)
    trainer.train()
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_gradient_accumulation_matches_the_full_batch(tokenizer, trained_tiny, tmp_path):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    texts = FORGET_TEXTS + RETAIN_TEXTS[:4]
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        args = run_config(EarlyExitTrainingConfig, tmp_path / f"{batch_size}", max_steps=1, learning_rate=1e-2,
                          per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                          optim="sgd", early_exit_kwargs={"min_exit_layer": 1})
        model = EarlyExitForCausalLM.from_backbone(backbone.__class__(backbone.config), exit_head="adapter",
                                                   min_exit_layer=1)
        model.backbone.load_state_dict(backbone.state_dict())
        torch.manual_seed(0)
        for p in model.early_exit.parameters():
            torch.nn.init.normal_(p, std=0.05)
        trainer = EarlyExitTrainer(model, args, train_dataset=texts[:4], processing_class=tokenizer)
        trainer.train()
        results.append({k: v.clone() for k, v in model.early_exit.state_dict().items()})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fraction", [0.25, 0.0])
def test_policy_stages_use_sequences_the_heads_never_saw(tokenizer, trained_tiny, tmp_path, fraction):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    texts = FORGET_TEXTS + RETAIN_TEXTS
    args = run_config(ConsistentEEConfig, tmp_path, max_steps=1, policy_data_fraction=fraction,
                      early_exit_kwargs={"min_exit_layer": 1})
    trainer = ConsistentEETrainer(backbone, args, train_dataset=texts, processing_class=tokenizer)
    heads = [tuple(r) for r in trainer.train_dataset["input_ids"]]
    trainer.train(stage="memorize")
    policy = [tuple(r) for r in trainer.train_dataset["input_ids"]]
    if fraction:
        assert len(policy) == round(len(texts) * fraction) and len(heads) == len(texts) - len(policy)
        assert not set(heads) & set(policy)
    else:
        assert trainer.policy_dataset is None and policy == heads and len(heads) == len(texts)
    with pytest.raises(ValueError, match="policy_data_fraction"):
        ConsistentEEConfig(output_dir=str(tmp_path), policy_data_fraction=1.0)
    with pytest.raises(ValueError, match="leaves no sequence for the exit heads"):
        ConsistentEETrainer(backbone, run_config(ConsistentEEConfig, tmp_path, policy_data_fraction=0.9),
                            train_dataset=texts[:1], processing_class=tokenizer)


def test_consistentee_stages_run_alone_and_in_order(tokenizer, trained_tiny, tmp_path):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    args = run_config(ConsistentEEConfig, tmp_path, max_steps=2, policy_max_steps=2, joint_max_steps=2,
                      policy_warmup_max_steps=2, stages=["heads", "memorize", "policy_warmup", "policy", "joint"],
                      early_exit_kwargs={"min_exit_layer": 1},
                      save_strategy="steps", save_steps=2)
    trainer = ConsistentEETrainer(backbone, args, train_dataset=FORGET_TEXTS + RETAIN_TEXTS,
                                  processing_class=tokenizer)
    with pytest.raises(ValueError, match="run the 'memorize' stage first"):
        trainer.train(stage="policy")
    trainer.train(stage="heads")
    policy_before = {k: v.clone() for k, v in trainer.model.early_exit.policy.state_dict().items()}
    trainer.train(stage="memorize")
    row = trainer.train_dataset[0]
    assert len(row[MEMORIZED_COLUMN]) == len(row["labels"]) and row[MEMORIZED_COLUMN][0] == 0
    adapters_before = {k: v.clone() for k, v in trainer.model.early_exit.adapters.state_dict().items()}
    trainer.train(stage="policy_warmup")
    warmed = {k: v.clone() for k, v in trainer.model.early_exit.policy.state_dict().items()}
    assert any({"warmup_loss", "policy_accuracy"} <= set(h) for h in trainer.state.log_history)
    assert not all(torch.equal(v, warmed[k]) for k, v in policy_before.items())
    trainer.train(stage="policy")
    assert not all(torch.equal(v, trainer.model.early_exit.policy.state_dict()[k]) for k, v in warmed.items())
    assert all(torch.equal(v, trainer.model.early_exit.adapters.state_dict()[k]) for k, v in adapters_before.items())
    assert not all(torch.equal(v, trainer.model.early_exit.policy.state_dict()[k]) for k, v in policy_before.items())
    assert trainer.model.config.policy_trained
    trainer.train(stage="joint")
    assert (tmp_path / "out" / "joint" / "checkpoint-2").exists() and (tmp_path / "out" / "heads").exists()
    assert trainer.args.output_dir == str(tmp_path / "out")
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and {"mean_exit_layer", "exit_accuracy", "exit_frac_1", "policy_loss"} <= set(logged[0])


def test_memorized_layers_of_the_full_model_targets(tokenizer, trained_tiny):
    model = EarlyExitForCausalLM.from_backbone(trained_tiny(tokenizer, "llama", steps=60, layers=4), min_exit_layer=1)
    from hf_unlearn.data import prepare_dataset

    dataset = prepare_dataset(FORGET_TEXTS, tokenizer, "texts", 64)
    out = add_memorized_layers(model, dataset, tokenizer.pad_token_id, reward_target="full_model", batch_size=3)
    ids = torch.tensor(out[0]["input_ids"]).unsqueeze(0)
    with torch.no_grad():
        full = model(ids, exit_strategy="none").logits.argmax(-1)[0]
        every = model(ids, output_all_exits=True)
    assert out[0]["exit_labels"][1:] == full[:-1].tolist()
    correct = torch.stack([lg[0, :-1].argmax(-1) == full[:-1] for lg in every.exit_logits])
    assert out[0][MEMORIZED_COLUMN][1:] == losses.memorized_layers(correct, [1, 2, 3, 4]).tolist()


def test_bad_configs_get_clear_errors(tokenizer, trained_tiny, tmp_path):
    with pytest.raises(ValueError, match="stages"):
        run_config(ConsistentEEConfig, tmp_path, stages=["heads", "warmup"])
    with pytest.raises(ValueError, match="num_rollouts must be >= 2"):
        run_config(ConsistentEEConfig, tmp_path, num_rollouts=1)
    with pytest.raises(ValueError, match="reward_target='gold' is unknown"):
        run_config(ConsistentEEConfig, tmp_path, reward_target="gold")
    with pytest.raises(ValueError, match="self_distillation with train_backbone"):
        run_config(EarlyExitTrainingConfig, tmp_path, self_distillation=True, train_backbone=True)
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    shared = run_config(EarlyExitTrainingConfig, tmp_path, early_exit_kwargs={"exit_head": "shared"})
    with pytest.raises(ValueError, match="nothing to train"):
        EarlyExitTrainer(backbone, shared, train_dataset=FORGET_TEXTS, processing_class=tokenizer)


# ---------------------------------------------------------------------------------------------- easy and hard tokens

EASY, HARD, IMPOSSIBLE = 1, 2, 3
KEYS, VALUES, ITEMS = list(range(4, 14)), list(range(14, 24)), list(range(24, 40))
SUCCESSOR = dict(zip(KEYS, VALUES))


def _task_sequence(rng: random.Random) -> list[int]:
    """[r1 a1 b1 r2 a2 b2 ...] twice: b = successor(a) is a bigram (easy); in the repeat, r and a are recalled
    from the first half (induction: hard); in the first half they are random (impossible)."""
    half = []
    for item in rng.sample(ITEMS, 4):
        key = rng.choice(KEYS)
        half += [item, key, SUCCESSOR[key]]
    return [1, *half, *half]


def _token_kinds(length: int) -> torch.Tensor:
    """Kind of each label (position i, predicted from i - 1)."""
    half = (length - 1) // 2
    kinds = [0]
    for i in range(1, length):
        kinds.append(EASY if (i - 1) % 3 == 2 else HARD if i > half else IMPOSSIBLE)
    return torch.tensor(kinds)


@pytest.fixture(scope="module")
def task_backbone():
    rng = random.Random(0)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=74, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        batch = torch.tensor([_task_sequence(rng) for _ in range(32)])
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize(
    "stages",
    [
        ["heads", "memorize", "policy"],  # the paper's stages
        ["heads", "memorize", "policy_warmup"],  # the supervised warm start alone
        ["heads", "memorize", "policy_warmup", "policy"],  # the default
    ],
)
def test_consistentee_exits_easy_tokens_earlier_than_hard_ones(task_backbone, tokenizer, tmp_path, stages):
    rng = random.Random(1)
    rows = []
    for _ in range(128):
        ids = _task_sequence(rng)
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    args = run_config(
        ConsistentEEConfig, tmp_path, per_device_train_batch_size=16, max_steps=20, learning_rate=3e-3,
        policy_max_steps=60, policy_learning_rate=2e-2, cost_coefficient=0.2, logging_steps=10,
        policy_warmup_max_steps=30, policy_warmup_learning_rate=1e-2, stages=stages,
        early_exit_kwargs={"min_exit_layer": 1},
    )
    trainer = ConsistentEETrainer(task_backbone, args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    memorized = torch.tensor(trainer.train_dataset[MEMORIZED_COLUMN])
    kinds = _token_kinds(memorized.shape[1])
    assert memorized[:, kinds == EASY].float().mean() < 1.5 < memorized[:, kinds == HARD].float().mean()

    model = trainer.model.eval()
    test = torch.tensor([_task_sequence(rng) for _ in range(64)])
    with torch.no_grad():
        out = model(test, exit_all_positions=True, exit_strategy="policy")
    # The exit of position i - 1 produces label i.
    exit_of_label = out.exit_layers[:, :-1].float()
    label_kinds = kinds[1:]
    easy = exit_of_label[:, label_kinds == EASY].mean().item()
    hard = exit_of_label[:, label_kinds == HARD].mean().item()
    assert easy + 1.0 < hard, (easy, hard)
    predictions = out.logits[:, :-1].argmax(-1)
    assert (predictions == test[:, 1:])[:, label_kinds == EASY].float().mean() > 0.95


# ---------------------------------------------------------------------------------------------- lossless mode


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "settings",
    [
        dict(exit_strategy="fixed", fixed_exit_layer=1),
        dict(exit_strategy="confidence", confidence_threshold=0.8),
        dict(exit_strategy="entropy", entropy_threshold=0.8),
        dict(exit_strategy="patience", patience=2),
        dict(exit_strategy="policy"),
    ],
)
def test_lossless_mode_equals_the_full_models_greedy_output(tokenizer, trained_tiny, kind, settings):
    backbone = trained_tiny(tokenizer, kind, steps=60, layers=4).eval()
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1, policy_trained=True).eval()
    with torch.no_grad():
        for p in model.early_exit.policy.parameters():
            p.normal_(std=0.5)
    for text in ["harry potter studied at", "the capital city of", "the cat"]:
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        expected = backbone.generate(ids, max_new_tokens=15, do_sample=False, eos_token_id=[], pad_token_id=0)
        for drafts in (1, 3):
            out = model.generate_lossless(ids, max_new_tokens=15, num_draft_tokens=drafts, eos_token_id=[], **settings)
            assert torch.equal(out.sequences, expected), (text, drafts)
            assert out.accepted_tokens <= out.draft_tokens and out.rounds > 0
        for length in (1, 2):  # the answer's end forces the verification of any pending draft
            short = model.generate_lossless(ids, max_new_tokens=length, eos_token_id=[], **settings)
            assert torch.equal(short.sequences, expected[:, : ids.shape[1] + length])


def test_lossless_mode_reuses_the_lower_layers_and_stops_at_eos(tokenizer, trained_tiny):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4).eval()
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    calls, positions = [0] * 4, [0] * 4

    def count(module, args, i):
        calls[i] += 1
        positions[i] += args[0].shape[1]

    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: count(m, a, i))
             for i, layer in enumerate(model._layers())]
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    try:
        out = model.generate_lossless(ids, max_new_tokens=9, num_draft_tokens=4, eos_token_id=[],
                                      exit_strategy="fixed", fixed_exit_layer=2)
    finally:
        for hook in hooks:
            hook.remove()
    # Lower layers: the prompt, then every step; upper layers: the prompt, then one verifying step per round, which
    # runs the pending drafts with its own token: no position passes a layer twice.
    steps = out.draft_tokens + out.rounds
    assert calls[0] == calls[1] == 1 + steps and calls[2] == calls[3] == 1 + out.rounds
    assert positions[0] == positions[1] == positions[2] == positions[3] == ids.shape[1] + steps
    full = backbone.generate(ids, max_new_tokens=9, do_sample=False, eos_token_id=[], pad_token_id=0)
    stop = int(full[0, ids.shape[1] + 2])
    stopped = model.generate_lossless(ids, max_new_tokens=9, eos_token_id=stop, exit_strategy="fixed",
                                      fixed_exit_layer=2)
    assert int(stopped.sequences[0, -1]) == stop and stopped.sequences.shape[1] <= ids.shape[1] + 3
    with pytest.raises(ValueError, match="one sequence at a time"):
        model.generate_lossless(torch.cat([ids, ids]), exit_strategy="fixed", fixed_exit_layer=2)


def test_lossless_drafts_come_from_the_shortlist(tokenizer, trained_tiny):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4).eval()
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    expected = backbone.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=[], pad_token_id=0)
    settings = dict(max_new_tokens=10, eos_token_id=[], exit_strategy="fixed", fixed_exit_layer=3)
    with_full_head = model.generate_lossless(ids, **settings)
    assert with_full_head.accepted_tokens > 0  # the layer-3 exit does guess some tokens right
    # A shortlist without any of the full model's tokens: every draft is wrong, the output still exact.
    absent = [t for t in range(len(tokenizer)) if t not in set(expected[0].tolist())][:8]
    model.set_exit_shortlist(absent)
    out = model.generate_lossless(ids, **settings)
    assert torch.equal(out.sequences, expected)
    assert out.draft_tokens > 0 and out.accepted_tokens == 0


# ---------------------------------------------------------------------------------------------- evaluate_exits


def test_evaluate_exits_reports_what_the_model_does(tokenizer, trained_tiny, tmp_path):
    from hf_unlearn.early_exit import evaluate_exits

    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4).eval()
    model = EarlyExitForCausalLM.from_backbone(backbone, min_exit_layer=1).eval()
    prompts = ["harry potter studied at", "the capital city of"]
    table = evaluate_exits(model, tokenizer, prompts, {"fixed": [2, 4], "confidence": [0.9]},
                           held_out_texts=RETAIN_TEXTS[:3], max_new_tokens=6, lossless=True, disable_tqdm=True)
    rows = {row["point"]: row for row in table.rows}
    assert rows["fixed=4"]["agreement"] == 1.0 and rows["fixed=4"]["mean_exit_layer"] == 4.0
    assert rows["fixed=2"]["mean_exit_layer"] == 2.0 and rows["fixed=2"]["layer_speedup"] == 2.0
    # Independent: layers 1-2 are computed exactly at every position, so the fixed-2 exit sees the backbone's
    # own layer-2 states on the full model's continuation.
    same = total = 0
    for prompt in prompts:
        ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
        reference = backbone.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=[], pad_token_id=0)
        captured = {}
        hook = model._layers()[1].register_forward_hook(lambda m, a, o, store=captured: store.setdefault("h", o))
        with torch.no_grad():
            backbone(reference)
        hook.remove()
        start = ids.shape[1]
        predicted = backbone.lm_head(backbone.model.norm(captured["h"]))[0, start:-1].argmax(-1)
        same += int((predicted == reference[0, start + 1:]).sum())
        total += predicted.numel()
    assert rows["fixed=2"]["agreement"] == pytest.approx(same / total)
    assert rows["full model"]["perplexity"] == pytest.approx(rows["fixed=4"]["perplexity"], rel=1e-5)
    lossless = [row for row in table.rows if row["strategy"] == "lossless"]
    assert len(lossless) == 3 and all(row["generation_agreement"] == 1.0 for row in lossless)
    # The last layer is no internal exit: no drafts there; the layer-2 exit drafts until four are pending.
    assert rows["lossless, fixed=4 drafts (k=4)"]["drafts_per_token"] == 0
    drafting = rows["lossless, fixed=2 drafts (k=4)"]
    assert drafting["drafts_per_token"] >= 0.5 and 0 <= drafting["draft_acceptance"] <= 1
    assert all(row["tokens_per_s"] > 0 for row in table.rows)
    table.plot(tmp_path / "exits.png")
    table.to_json(tmp_path / "exits.json")
    assert (tmp_path / "exits.png").stat().st_size > 1000 and "| fixed=2 |" in table.to_markdown()
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        evaluate_exits(model, tokenizer, prompts, {"fast": [1]})


def test_exit_losses_over_a_vocabulary_subset(wrapped, tokenizer):
    batch = tokenizer(FORGET_TEXTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        full = wrapped(**batch, labels=labels, output_all_exits=True)
        everything = wrapped(**batch, labels=labels, output_all_exits=True,
                             exit_vocabulary=torch.arange(len(tokenizer)))
        torch.testing.assert_close(everything.exit_losses, full.exit_losses)
        subset = torch.tensor(sorted(set(labels[labels >= 0].tolist()) | {5, 6, 7}))
        restricted = wrapped(**batch, labels=labels, output_all_exits=True, exit_vocabulary=subset)
        logits = wrapped(**batch, output_all_exits=True).exit_logits[0][:, :-1][..., subset]
        targets = torch.searchsorted(subset, labels[:, 1:].clamp(min=0))
        expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        expected = expected * (labels[:, 1:] != -100)
        torch.testing.assert_close(restricted.exit_losses[0], expected, rtol=1e-5, atol=1e-5)
        distilled = wrapped(**batch, labels=labels, output_all_exits=True, self_distill=True, exit_vocabulary=subset)
        teacher = torch.softmax(wrapped(**batch, output_all_exits=True).exit_logits[-1][:, :-1][..., subset], -1)
        expected = -(teacher * torch.log_softmax(logits, -1)).sum(-1) * (labels[:, 1:] != -100)
        torch.testing.assert_close(distilled.exit_losses[0], expected, rtol=1e-5, atol=1e-5)


def test_shortlist_loss_adds_random_negatives(tokenizer, trained_tiny, tmp_path):
    backbone = trained_tiny(tokenizer, "llama", steps=60, layers=4)
    model = EarlyExitForCausalLM.from_backbone(backbone, exit_head="adapter", min_exit_layer=1)
    model.set_exit_shortlist(list(range(10)))
    args = run_config(EarlyExitTrainingConfig, tmp_path, max_steps=1, loss_on_shortlist=True, shortlist_negatives=20)
    trainer = EarlyExitTrainer(model, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer)
    first, second = trainer.loss_vocabulary(model), trainer.loss_vocabulary(model)
    assert first[:10].tolist() == list(range(10)) and len(first) == 30 and len(set(first.tolist())) == 30
    assert min(first[10:].tolist()) >= 10 and not torch.equal(first, second)
    trainer.train()
    plain = EarlyExitForCausalLM.from_backbone(trained_tiny(tokenizer, "llama", steps=60, layers=4),
                                               exit_head="adapter")
    with pytest.raises(ValueError, match="needs a token shortlist"):
        EarlyExitTrainer(plain, args, train_dataset=FORGET_TEXTS, processing_class=tokenizer)
