"""``ConsistentEEConfig`` / ``ConsistentEETrainer``: ConsistentEE (Zeng et al., AAAI 2024) for causal LMs.

A policy decides per token whether to exit at each exit layer; it is trained with the inference process itself:
the loss of a token is that of the exit it actually takes, and the reward trades accuracy against depth with a depth
cost scaled by the token's hardness, its *memorized layer* (the shallowest exit from which every deeper exit gets it
right). The stages, each runnable alone (``trainer.train(stage="policy")``) and all in one ``train()``:

1. ``"heads"``: the exit heads, as [`EarlyExitTrainer`] does (layer-weighted cross-entropy);
2. ``"memorize"``: every training token's memorized layer, computed once with the stage-1 model and kept as a
   dataset column (``memorized_layers``, aligned with ``labels``; see :func:`add_memorized_layers`);
   ``"policy_warmup"`` (not in the paper, on by default): the policy learns, by binary cross-entropy, the chance that
   a token is memorized by each exit (see :func:`hf_unlearn.losses.policy_warmup_loss`). Started from scratch,
   REINFORCE settles at small exit probabilities spread over the exits, which an inference threshold never passes
   (the policy never exits); the warm start gives the threshold its meaning;
3. ``"policy"``: REINFORCE with ``K`` rollouts of each batch and the mean reward of the rollouts as baseline; exit
   actions are *sampled* from the policy (optional ε exploration); reward
   ``R = -CE_e - c · (1 - m/L) · e``, for the token that position ``t`` predicts (label ``t + 1``);
4. ``"joint"`` (optional): heads and policy together, exit-layer cross-entropy + λ · policy loss.

Decisions are simulated in one teacher-forced pass per rollout: a position that exits is frozen there, and deeper
layers see its exit state, which is exactly the key/value fill of inference. Prompt positions (label -100) run at
full depth, as in generation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import losses
from ..architectures import underlying_model
from ..data import UnlearningCollator
from ..eval_mode import eval_mode
from .early_exit import EarlyExitTrainer, EarlyExitTrainingConfig, exit_histogram

STAGES = ("heads", "memorize", "policy_warmup", "policy", "joint")
MEMORIZED_COLUMN = "memorized_layers"
TARGET_COLUMN = "exit_labels"


@dataclass
class ConsistentEEConfig(EarlyExitTrainingConfig):
    r"""
    Configuration class for the [`ConsistentEETrainer`]. The `"heads"` stage uses `learning_rate`, `max_steps` and
    `num_train_epochs`; the policy and joint stages have their own learning rate and step count.

    Parameters:
        stages (`list[str]`, *optional*, defaults to `["heads", "memorize", "policy_warmup", "policy"]`):
            Stages run by `train()`, in order: `"heads"`, `"memorize"`, `"policy_warmup"`, `"policy"`, `"joint"`.
        policy_warmup_learning_rate (`float`, *optional*, defaults to `1e-3`):
            Learning rate of the policy's supervised warm start (the policy head is small and starts from scratch).
        policy_warmup_max_steps (`int`, *optional*, defaults to `-1`):
            Steps of the warm start (-1: `num_train_epochs` epochs).
        policy_learning_rate (`float`, *optional*, defaults to `3e-4`):
            Learning rate of the policy stage (ConsistentEE's value for BERT and Llama).
        policy_max_steps (`int`, *optional*, defaults to `-1`):
            Steps of the policy stage (-1: `num_train_epochs` epochs).
        joint_learning_rate (`float`, *optional*, defaults to `3e-5`):
            Learning rate of the joint stage (ConsistentEE's third stage).
        joint_max_steps (`int`, *optional*, defaults to `-1`):
            Steps of the joint stage (-1: `num_train_epochs` epochs).
        num_rollouts (`int`, *optional*, defaults to `4`):
            Rollouts K of each batch (ConsistentEE: 4 for Llama, 8 for BERT).
        rollout_baseline (`str`, *optional*, defaults to `"mean"`):
            REINFORCE baseline: the mean reward of the K rollouts of a token (`"mean"`, ConsistentEE) or of the
            other K - 1 (`"leave_one_out"`, unbiased).
        exit_epsilon (`float`, *optional*, defaults to `0.0`):
            Chance of replacing a sampled action by a coin flip. The actions are sampled from the policy, which
            explores by itself; the released code thresholds them and needs ε = 0.1 instead.
        cost_coefficient (`float`, *optional*, defaults to `0.02`):
            Depth cost c of the reward (ConsistentEE's BERT runner tries 0.01 to 0.09 per layer; its shipped
            Llama script sets it to 0, which removes all pressure to exit early).
        cost_shape (`str`, *optional*, defaults to `"layers"`):
            `cost(e)` in the reward: `"layers"` (e), `"fraction"` (e / L) or `"log"` (log e).
        accuracy_weight (`float`, *optional*, defaults to `1.0`):
            Weight a of the accuracy term of the reward.
        exit_reward (`str`, *optional*, defaults to `"cross_entropy"`):
            The accuracy term: the exit's `"cross_entropy"` for the target (ConsistentEE), or `"mismatch"`, 1 when
            the exit's top-1 token is wrong and 0 when it is right, which rewards agreement itself (the cross-entropy
            keeps falling with depth even where the top-1 token no longer changes, so it pulls the policy deeper).
        reward_target (`str`, *optional*, defaults to `"labels"`):
            What an exit is scored against, in the memorized layers and the reward: the dataset's `"labels"`, or
            the `"full_model"`'s own greedy prediction (the policy then learns to exit where the exit agrees with
            the full model).
        normalize_log_probs (`bool`, *optional*, defaults to `False`):
            Divide each token's trajectory log-probability by the layers it ran (the released Llama variant).
        policy_loss_weight (`float`, *optional*, defaults to `1.0`):
            λ, the weight of the policy loss in the joint stage.
        policy_data_fraction (`float`, *optional*, defaults to `0.25`):
            Share of the training sequences kept away from the `"heads"` stage: the `"memorize"` stage and the
            policy's stages use only these. Exits are more accurate on the text they were trained on (SmolLM2's
            layer-28 exit in `bench/bench_consistentee.py`: 0.80 agreement on its training tokens, 0.71 on
            held-out prompts), so a policy that learns where to exit from those tokens exits too early on new text.
            0 uses every sequence for every stage (the paper). The split is drawn once, with `seed`, when the
            trainer is built on a (map-style) dataset without memorized layers.
    """

    stages: list[str] = field(
        default_factory=lambda: ["heads", "memorize", "policy_warmup", "policy"],
        metadata={"help": "Stages run by train(), in order: heads, memorize, policy_warmup, policy, joint."},
    )
    policy_warmup_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the policy's warm start."}
    )
    policy_warmup_max_steps: int = field(
        default=-1, metadata={"help": "Steps of the policy's warm start (-1: epochs)."}
    )
    policy_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of the policy stage."})
    policy_max_steps: int = field(default=-1, metadata={"help": "Steps of the policy stage (-1: epochs)."})
    joint_learning_rate: float = field(default=3e-5, metadata={"help": "Learning rate of the joint stage."})
    joint_max_steps: int = field(default=-1, metadata={"help": "Steps of the joint stage (-1: epochs)."})
    num_rollouts: int = field(default=4, metadata={"help": "Rollouts K of each batch."})
    rollout_baseline: str = field(default="mean", metadata={"help": "'mean' or 'leave_one_out'."})
    exit_epsilon: float = field(default=0.0, metadata={"help": "Chance of a random exit action (exploration)."})
    cost_coefficient: float = field(default=0.02, metadata={"help": "Depth cost c of the reward."})
    cost_shape: str = field(default="layers", metadata={"help": "cost(e): 'layers', 'fraction' or 'log'."})
    accuracy_weight: float = field(default=1.0, metadata={"help": "Weight of the accuracy term of the reward."})
    exit_reward: str = field(
        default="cross_entropy", metadata={"help": "Accuracy term: 'cross_entropy' or 'mismatch' (0/1)."}
    )
    reward_target: str = field(default="labels", metadata={"help": "Score exits against 'labels' or 'full_model'."})
    normalize_log_probs: bool = field(
        default=False, metadata={"help": "Divide trajectory log-probs by the layers run."}
    )
    policy_loss_weight: float = field(default=1.0, metadata={"help": "λ of the policy loss in the joint stage."})
    policy_data_fraction: float = field(
        default=0.25,
        metadata={"help": "Share of the sequences held out from the heads stage for the memorized layers and policy."},
    )

    def __post_init__(self):
        super().__post_init__()
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ValueError(f"stages {self.stages} must be a non-empty list of {list(STAGES)}")
        if self.num_rollouts < 2:
            raise ValueError(f"num_rollouts must be >= 2 for the group baseline (got {self.num_rollouts})")
        checks = {
            "rollout_baseline": ("mean", "leave_one_out"),
            "cost_shape": ("layers", "fraction", "log"),
            "reward_target": ("labels", "full_model"),
            "exit_reward": ("cross_entropy", "mismatch"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; choose one of {list(allowed)}")
        if not 0.0 <= self.exit_epsilon <= 1.0:
            raise ValueError(f"exit_epsilon must be in [0, 1] (got {self.exit_epsilon})")
        if not 0.0 <= self.policy_data_fraction < 1.0:
            raise ValueError(f"policy_data_fraction must be in [0, 1) (got {self.policy_data_fraction})")
        if self.cost_coefficient < 0 or self.accuracy_weight < 0 or self.policy_loss_weight < 0:
            raise ValueError("cost_coefficient, accuracy_weight and policy_loss_weight must be >= 0")


class ConsistentEETrainer(EarlyExitTrainer):
    """ConsistentEE: exit heads, memorized layers, then an exit policy trained by REINFORCE.

    Example:
        >>> trainer = ConsistentEETrainer(model, ConsistentEEConfig(policy_max_steps=200), train_dataset=texts)
        >>> trainer.train()   # heads, memorized layers, policy; then model.generate(..., exit_strategy="policy")
    """

    config_class = ConsistentEEConfig
    method_name = "consistentee"
    _tag_names: ClassVar[list[str]] = ["hf_unlearn", "early-exit", "consistentee"]
    token_columns: ClassVar[dict[str, int]] = {MEMORIZED_COLUMN: 0, TARGET_COLUMN: losses.IGNORE_INDEX}

    def __init__(self, *args, **kwargs):
        self._stage = "heads"
        super().__init__(*args, **kwargs)
        #: the sequences of the memorized layers and the policy (``policy_data_fraction``), None: all of them.
        self.policy_dataset = None
        fraction = self.args.policy_data_fraction
        dataset = self.train_dataset
        if fraction > 0 and isinstance(dataset, Dataset) and MEMORIZED_COLUMN not in dataset.column_names:
            held = max(1, round(len(dataset) * fraction))
            if held >= len(dataset):
                raise ValueError(
                    f"policy_data_fraction={fraction} leaves no sequence for the exit heads ({len(dataset)} "
                    "sequences): give more data or a smaller fraction (0 shares every sequence)"
                )
            split = dataset.train_test_split(test_size=held, seed=self.args.seed, shuffle=True)
            self.train_dataset, self.policy_dataset = split["train"], split["test"]

    # ------------------------------------------------------------------ stages

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, stage: str | None = None,
              **kwargs):
        """Run ``stage`` alone, or every stage of ``args.stages`` in order. Checkpoints go to
        ``output_dir/<stage>``; ``resume_from_checkpoint`` applies to the first stage run."""
        if stage is not None and stage not in STAGES:
            raise ValueError(f"stage={stage!r} is unknown; choose one of {list(STAGES)}")
        result = None
        for position, name in enumerate([stage] if stage is not None else list(self.args.stages)):
            if name == "memorize":
                sequences = self.policy_dataset if self.policy_dataset is not None else self.train_dataset
                self.train_dataset = add_memorized_layers(
                    self.model, sequences, self.processing_class.pad_token_id, self.args.reward_target,
                    batch_size=self.args.per_device_eval_batch_size, device=self.args.device,
                    disable_tqdm=self.args.disable_tqdm,
                )
                continue
            resume = resume_from_checkpoint if position == 0 else None
            result = self._train_stage(name, resume, trial, ignore_keys_for_eval, **kwargs)
        return result

    def _train_stage(self, name: str, resume, trial, ignore_keys_for_eval, **kwargs):
        args = self.args
        if name in ("policy_warmup", "policy", "joint") and MEMORIZED_COLUMN not in self.train_dataset.column_names:
            raise ValueError(
                f"the {name!r} stage needs the memorized layers of the training tokens: run the 'memorize' stage "
                "first (trainer.train(stage='memorize')), or include it in ConsistentEEConfig.stages"
            )
        learning_rate, max_steps = {
            "heads": (args.learning_rate, args.max_steps),
            "policy_warmup": (args.policy_warmup_learning_rate, args.policy_warmup_max_steps),
            "policy": (args.policy_learning_rate, args.policy_max_steps),
            "joint": (args.joint_learning_rate, args.joint_max_steps),
        }[name]
        saved = (args.learning_rate, args.max_steps, args.output_dir)
        self._stage = name
        policy_only = name in ("policy_warmup", "policy")
        self._set_trainable(self.model, heads=not policy_only, policy=name != "heads",
                            backbone=args.train_backbone and not policy_only)
        # A fresh optimizer and schedule over this stage's parameters; the model is re-wrapped on the next prepare.
        self.optimizer, self.lr_scheduler = None, None
        self.model_wrapped = self.model
        args.learning_rate, args.max_steps = learning_rate, max_steps
        args.output_dir = os.path.join(saved[2], name)
        try:
            result = super().train(
                resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        finally:
            args.learning_rate, args.max_steps, args.output_dir = saved
        if name in ("policy_warmup", "policy", "joint"):
            self.early_exit_model(self.model).config.policy_trained = True
        return result

    # ------------------------------------------------------------------ losses

    def scored_positions(self, labels: torch.Tensor) -> torch.Tensor:
        if self._stage == "heads":
            return super().scored_positions(labels)
        # Positions that decide: their own token is generated text and they have a next token to score.
        return (labels[:, :-1] != losses.IGNORE_INDEX) & (labels[:, 1:] != losses.IGNORE_INDEX)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._stage == "heads":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._stage == "policy_warmup":
            return self._warmup_loss(model, inputs, return_outputs, num_items_in_batch)
        args = self.args
        mode = "train" if model.training else "eval"
        early_exit = self.early_exit_model(model)
        depth = early_exit.config.num_hidden_layers
        rollouts = args.num_rollouts
        labels = inputs["labels"]
        targets = inputs[TARGET_COLUMN] if args.reward_target == "full_model" else labels
        batch, length = labels.shape

        def repeat(x):
            return x.repeat(rollouts, *([1] * (x.dim() - 1)))

        outputs = model(
            input_ids=repeat(inputs["input_ids"]),
            attention_mask=repeat(inputs["attention_mask"]),
            labels=repeat(targets),
            output_all_exits=True,
            sample_exits=True,
            exit_epsilon=args.exit_epsilon,
            use_cache=False,
        )
        shape = (rollouts, batch, length - 1)
        # Position t decides the exit that predicts label t + 1: every per-position quantity below is on that grid.
        exit_layers = outputs.exit_layers[:, :-1].reshape(shape)
        exit_losses = outputs.exit_token_losses.reshape(shape)
        log_probs = outputs.exit_log_probs[:, :-1].reshape(shape)
        memorized = inputs[MEMORIZED_COLUMN][:, 1:].unsqueeze(0).expand(shape)
        deciding = self.scored_positions(labels).unsqueeze(0).expand(shape)
        correct = outputs.exit_token_correct.reshape(shape)
        accuracy_term = exit_losses.detach() if args.exit_reward == "cross_entropy" else (~correct).float()
        rewards = losses.consistentee_rewards(
            accuracy_term, exit_layers, memorized, depth, args.cost_coefficient, args.cost_shape, args.accuracy_weight
        )
        if args.normalize_log_probs:
            log_probs = log_probs / exit_layers.clamp(min=1)
        normaliser = self._normaliser(labels, num_items_in_batch)
        policy_loss = losses.reinforce_loss(rewards, log_probs, deciding, args.rollout_baseline, normaliser)
        loss = policy_loss
        exit_loss = (exit_losses * deciding).sum() / (normaliser * rollouts)
        if self._stage == "joint":
            loss = exit_loss + args.policy_loss_weight * policy_loss
        if mode == "train":
            self._check_finite(loss, {"policy_loss": policy_loss, "exit_loss": exit_loss})
        chosen = exit_layers[deciding]
        count = deciding.sum().clamp(min=1)
        metrics = {
            "policy_loss": policy_loss,
            "exit_loss": exit_loss,
            "reward": (rewards * deciding).sum() / count,
            "mean_exit_layer": chosen.float().mean() if chosen.numel() else torch.tensor(float(depth)),
            "exit_accuracy": (correct & deciding).sum() / count,
            **exit_histogram(chosen, early_exit.config.all_exits, prefix="exit_frac"),
        }
        self._record(mode, metrics)
        return (loss, outputs) if return_outputs else loss

    def _warmup_loss(self, model, inputs, return_outputs, num_items_in_batch):
        mode = "train" if model.training else "eval"
        exit_layers = self.early_exit_model(model).config.exit_layers
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        output_all_exits=True, output_exit_logits=False, use_cache=False)
        # Position t decides the exit that predicts label t + 1.
        probs = outputs.policy_probs[:, :, :-1]
        memorized = inputs[MEMORIZED_COLUMN][:, 1:]
        deciding = self.scored_positions(inputs["labels"])
        normaliser = self._normaliser(inputs["labels"], num_items_in_batch)
        loss = losses.policy_warmup_loss(probs, exit_layers, memorized, deciding, normaliser)
        if mode == "train":
            self._check_finite(loss, {"warmup_loss": loss})
        layers = torch.tensor(exit_layers, device=probs.device).view(-1, 1, 1)
        predicted, target = probs > 0.5, layers >= memorized.unsqueeze(0)
        count = deciding.sum().clamp(min=1)
        self._record(mode, {
            "warmup_loss": loss,
            "policy_accuracy": ((predicted == target) & deciding).sum() / (count * len(exit_layers)),
        })
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def add_memorized_layers(
    model: nn.Module,
    dataset: Dataset,
    pad_token_id: int,
    reward_target: str = "labels",
    batch_size: int = 8,
    device: torch.device | str | None = None,
    disable_tqdm: bool = False,
) -> Dataset:
    """``dataset`` (tokenised: ``input_ids``, ``attention_mask``, ``labels``) with a ``memorized_layers`` column:
    for each label, the memorized layer of its prediction (0 where the label is -100), computed in one all-exits
    pass per batch with ``model`` in eval mode. With ``reward_target="full_model"`` the exits are scored against the
    full model's greedy predictions, stored too as ``exit_labels`` (-100 where the label is).

    Example:
        >>> dataset = add_memorized_layers(model, dataset, tokenizer.pad_token_id)
        >>> dataset[0]["memorized_layers"]   # one entry per label
    """
    from ..early_exit import EarlyExitForCausalLM

    inner = underlying_model(model)
    if not isinstance(inner, EarlyExitForCausalLM):
        raise ValueError("add_memorized_layers needs an EarlyExitForCausalLM (possibly PEFT-wrapped)")
    missing = {"input_ids", "attention_mask", "labels"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"the dataset must be tokenised; missing columns {sorted(missing)}")
    exits = inner.config.all_exits
    device = device or next(model.parameters()).device
    columns = ["input_ids", "attention_mask", "labels"]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, shuffle=False,
                        collate_fn=UnlearningCollator(pad_token_id))
    memorized_rows, target_rows = [], []
    with eval_mode(model):
        for batch in tqdm(loader, desc="Memorized layers", disable=disable_tqdm):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch["labels"]
            if reward_target == "full_model":
                full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                             exit_strategy="none").logits.argmax(-1)
                targets = torch.full_like(labels, losses.IGNORE_INDEX)
                targets[:, 1:] = torch.where(labels[:, 1:] != losses.IGNORE_INDEX, full[:, :-1], losses.IGNORE_INDEX)
            else:
                targets = labels
            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=targets,
                            output_all_exits=True, use_cache=False)
            memorized = losses.memorized_layers(outputs.exit_correct, exits)
            memorized = torch.where(targets[:, 1:] != losses.IGNORE_INDEX, memorized, 0)
            lengths = batch["attention_mask"].sum(-1)
            for row in range(labels.shape[0]):
                n = int(lengths[row])
                memorized_rows.append([0, *memorized[row, : n - 1].tolist()])
                target_rows.append(targets[row, :n].tolist())
    for name in (MEMORIZED_COLUMN, TARGET_COLUMN):
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
    dataset = dataset.add_column(MEMORIZED_COLUMN, memorized_rows)
    if reward_target == "full_model":
        dataset = dataset.add_column(TARGET_COLUMN, target_rows)
    return dataset
