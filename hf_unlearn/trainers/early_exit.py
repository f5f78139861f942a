"""``EarlyExitTrainingConfig`` / ``EarlyExitTrainer``: train the exits of an early-exit model.

The classic multi-exit objective: a layer-weighted sum of the exits' cross-entropies (weights uniform or ∝ depth),
each against the labels or, with self-distillation, against the full model's own next-token distribution (so any
text, or text the model generated itself, is training data). The backbone is frozen by default and the per-exit
adapters train; LoRA on the backbone (``peft_config``, the LayerSkip recipe) or full fine-tuning adapt the backbone
under the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .. import losses
from ..architectures import is_peft_model, underlying_model
from ..data import UnlearningCollator, prepare_dataset
from ..early_exit import EarlyExitForCausalLM
from .base import BaseConfig, BaseTrainer


@dataclass
class EarlyExitTrainingConfig(BaseConfig):
    r"""
    Configuration class for the [`EarlyExitTrainer`] (not to be confused with the model's [`EarlyExitConfig`]).

    Parameters:
        learning_rate (`float`, *optional*, defaults to `3e-4`):
            Learning rate of the exit heads (ConsistentEE's exit-head stage on Llama-2 uses 3e-4).
        exit_loss_weighting (`str`, *optional*, defaults to `"depth"`):
            Weights of the exits in the loss: `"depth"` (∝ the exit layer, PABEE and ConsistentEE) or `"uniform"`.
        self_distillation (`bool`, *optional*, defaults to `False`):
            Score each exit against the full model's next-token distribution instead of the labels: the frozen
            backbone's own last exit, or under LoRA the model with the adapter disabled. Not with
            `train_backbone=True` (the target would move with the weights).
        train_backbone (`bool`, *optional*, defaults to `False`):
            Fine-tune every backbone weight too. The default trains only the exit adapters (and LoRA weights when a
            `peft_config` is given).
        loss_on_shortlist (`bool`, *optional*, defaults to `False`):
            Compute the exit losses over the model's token shortlist only (`set_exit_shortlist`), a softmax
            restricted to it: `vocab_size / shortlist_size` times cheaper per exit, which is what makes exit training
            affordable on a CPU. Labels outside the shortlist are not scored; with self-distillation the target is
            the full model's distribution restricted to the shortlist.
        shortlist_negatives (`int`, *optional*, defaults to `2048`):
            With `loss_on_shortlist`, this many tokens from outside the shortlist join it at each step, drawn at
            random (sampled softmax): without them nothing pushes the other tokens' logits down, and the trained
            exits predict tokens outside the shortlist.
        early_exit_kwargs (`dict`, *optional*):
            [`EarlyExitConfig`] fields used when the model is a plain causal LM (or a path) that the trainer wraps;
            `exit_head` defaults to `"translator"` (an adapter with a full-rank map; `"adapter"` is the smaller one),
            the heads that train on a frozen backbone.
    """

    learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of the exit heads."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training text."})
    exit_loss_weighting: str = field(
        default="depth", metadata={"help": "Weights of the exits in the loss: 'depth' (∝ layer) or 'uniform'."}
    )
    self_distillation: bool = field(
        default=False, metadata={"help": "Score the exits against the full model's distribution, not the labels."}
    )
    train_backbone: bool = field(default=False, metadata={"help": "Fine-tune the whole backbone too."})
    loss_on_shortlist: bool = field(
        default=False, metadata={"help": "Compute the exit losses over the model's token shortlist only."}
    )
    shortlist_negatives: int = field(
        default=2048, metadata={"help": "Random tokens from outside the shortlist added at each step."}
    )
    early_exit_kwargs: dict[str, Any] | None = field(
        default=None, metadata={"help": "EarlyExitConfig fields when the trainer wraps a plain causal LM."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.exit_loss_weighting not in ("depth", "uniform"):
            raise ValueError(
                f"exit_loss_weighting={self.exit_loss_weighting!r} is unknown; choose 'depth' or 'uniform'"
            )
        if self.self_distillation and self.train_backbone:
            raise ValueError(
                "self_distillation with train_backbone=True would distil the model into a moving copy of itself: "
                "freeze the backbone, or adapt it with LoRA (peft_config), whose disabled adapter is the target"
            )


class EarlyExitTrainer(BaseTrainer):
    """Trains the exit heads of an [`EarlyExitForCausalLM`] (a plain causal LM or a path is wrapped first).

    Example:
        >>> trainer = EarlyExitTrainer(model, EarlyExitTrainingConfig(max_steps=100), train_dataset=texts)
        >>> trainer.train()
    """

    config_class = EarlyExitTrainingConfig
    method_name = "early-exit"
    _tag_names: ClassVar[list[str]] = ["hf_unlearn", "early-exit"]
    loss_is_scaled_for_ga = True
    #: per-token dataset columns kept for the loss, with their padding value.
    token_columns: ClassVar[dict[str, int]] = {}

    def _load_model(self, model, args) -> nn.Module:
        model = super()._load_model(model, args)
        if isinstance(model, EarlyExitForCausalLM) or is_peft_model(model):
            return model
        settings = {"exit_head": "translator", **(args.early_exit_kwargs or {})}
        return EarlyExitForCausalLM.from_backbone(model, **settings)

    def _apply_peft(self, model, peft_config, args):
        if peft_config.modules_to_save is None:
            # The exit adapters and the policy train and save with the LoRA adapter.
            peft_config.modules_to_save = ["early_exit"]
        return super()._apply_peft(model, peft_config, args)

    def _configure_model(self, model: nn.Module, args: EarlyExitTrainingConfig) -> None:
        early_exit = self.early_exit_model(model)
        if not isinstance(early_exit, EarlyExitForCausalLM):
            raise ValueError(f"{type(self).__name__} trains an EarlyExitForCausalLM, got {type(early_exit).__name__}")
        if args.loss_on_shortlist and early_exit.early_exit.shortlist.numel() == 0:
            raise ValueError(
                "loss_on_shortlist needs a token shortlist on the model: model.set_exit_shortlist("
                "token_shortlist(tokenizer, texts, size=4096)) before building the trainer"
            )
        if early_exit.config.exit_head == "shared" and not (args.train_backbone or self._is_peft):
            raise ValueError(
                "nothing to train: the exits share the frozen backbone's head. Wrap the model with "
                "exit_head='adapter', pass a peft_config (LoRA on the backbone), or set train_backbone=True"
            )
        self._set_trainable(model, heads=True, policy=False, backbone=args.train_backbone)

    def _set_trainable(self, model: nn.Module, heads: bool, policy: bool, backbone: bool) -> None:
        """Which parameters train; LoRA weights train with the heads (they adapt the backbone to the exits)."""
        for name, parameter in model.named_parameters():
            if "original_module" in name:  # PEFT's untouched copy of a module it trains (modules_to_save)
                parameter.requires_grad_(False)
            elif ".policy." in name or name.startswith("early_exit.policy"):
                parameter.requires_grad_(policy)
            elif "early_exit" in name:
                parameter.requires_grad_(heads)
            elif "lora_" in name:
                parameter.requires_grad_(heads)
            else:
                parameter.requires_grad_(backbone)

    @staticmethod
    def early_exit_model(model: nn.Module) -> EarlyExitForCausalLM:
        """The [`EarlyExitForCausalLM`] inside DDP/FSDP and PEFT wrappers."""
        return underlying_model(model)

    def _prepare_datasets(self, train_dataset, eval_dataset, processing_class, args):
        if train_dataset is None:
            raise ValueError("train_dataset (text to train the exits on) is required")
        train = prepare_dataset(train_dataset, processing_class, "train_dataset", args.max_length, False,
                                args.dataset_num_proc, args.append_eos)
        evaluation = None
        if eval_dataset is not None:
            evaluation = prepare_dataset(eval_dataset, processing_class, "eval_dataset", args.max_length, False,
                                         args.dataset_num_proc, args.append_eos)
        return train, evaluation

    def _default_collator(self, processing_class, args):
        return UnlearningCollator(processing_class.pad_token_id, args.pad_to_multiple_of, dict(self.token_columns))

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "attention_mask", "labels", *self.token_columns]

    # ------------------------------------------------------------------ loss scaling

    def scored_positions(self, labels: torch.Tensor) -> torch.Tensor:
        """Positions whose prediction enters the loss (position t predicts label t + 1)."""
        return labels[:, 1:] != losses.IGNORE_INDEX

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        count = sum(self.scored_positions(b["labels"]).sum() for b in batch_samples).to(device).double()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count.reshape(1)).sum()
        return batch_samples, count

    def _normaliser(self, labels: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """The step's scored-token count, times the world size when counts were gathered (DDP averages grads)."""
        if num_items_in_batch is None:
            return self.scored_positions(labels).sum().clamp(min=1).double()
        world = self.args.world_size if self.args.average_tokens_across_devices and self.args.world_size > 1 else 1
        return (num_items_in_batch / world).clamp(min=1)

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        early_exit = self.early_exit_model(model)
        kwargs = {}
        if self.args.self_distillation:
            if self._is_peft:
                with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                    kwargs["teacher_logits"] = model(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False,
                        exit_strategy="none",
                    ).logits
            else:
                kwargs["self_distill"] = True
        if self.args.loss_on_shortlist:
            kwargs["exit_vocabulary"] = self.loss_vocabulary(early_exit)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=inputs["labels"],
            output_all_exits=True,
            use_cache=False,
            **kwargs,
        )
        exits = early_exit.config.all_exits
        # The last exit is the backbone's own head: it trains only when the backbone does.
        trained = len(exits) if (self.args.train_backbone or self._is_peft) else len(exits) - 1
        weights = losses.exit_layer_weights(exits[:trained], self.args.exit_loss_weighting)
        normaliser = self._normaliser(inputs["labels"], num_items_in_batch)
        loss = losses.early_exit_loss(outputs.exit_losses[:trained], weights, normaliser).to(outputs.exit_losses)
        if mode == "train":
            self._check_finite(loss, {"loss": loss})
        self._record(mode, self._exit_metrics(outputs, inputs["labels"], exits))
        return (loss, outputs) if return_outputs else loss

    def loss_vocabulary(self, early_exit: EarlyExitForCausalLM) -> torch.Tensor:
        """The shortlist plus ``shortlist_negatives`` other tokens drawn at random (fresh at every call)."""
        shortlist = early_exit.early_exit.shortlist
        vocab = early_exit.config.backbone_config.vocab_size
        others = torch.ones(vocab, dtype=torch.bool, device=shortlist.device)
        others[shortlist] = False
        candidates = others.nonzero().squeeze(-1)
        count = min(self.args.shortlist_negatives, candidates.numel())
        negatives = candidates[torch.randperm(candidates.numel(), device=shortlist.device)[:count]]
        return torch.cat([shortlist, negatives])

    def _exit_metrics(self, outputs, labels: torch.Tensor, exits: list[int]) -> dict[str, torch.Tensor]:
        """Per-exit loss and accuracy, and the oracle exit: the memorized layer, where an exit that knew which exits
        are right would stop (its mean and histogram)."""
        scored = self.scored_positions(labels)
        count = scored.sum().clamp(min=1)
        metrics = {}
        for k, layer_loss, hit in zip(exits, outputs.exit_losses, outputs.exit_correct):
            metrics[f"exit_loss_{k}"] = layer_loss.sum() / count
            metrics[f"exit_accuracy_{k}"] = hit.sum() / count
        oracle = losses.memorized_layers(outputs.exit_correct, exits)[scored]
        metrics["oracle_exit_layer"] = oracle.float().mean() if oracle.numel() else torch.tensor(float(exits[-1]))
        metrics.update(exit_histogram(oracle, exits, prefix="oracle_exit_frac"))
        return metrics

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def exit_histogram(exit_layers: torch.Tensor, exits: list[int], prefix: str) -> dict[str, torch.Tensor]:
    """Share of the tokens at each exit layer, as ``{f"{prefix}_{k}": share}`` metrics."""
    total = max(exit_layers.numel(), 1)
    return {f"{prefix}_{k}": (exit_layers == k).sum() / total for k in exits}
