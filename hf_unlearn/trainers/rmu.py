"""RMU (Li et al. 2024, WMDP): steer one layer's activations on the forget set towards a random direction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .. import losses
from ..activations import StopForward, record_activations
from ..architectures import decoder_layers, is_peft_model, mlp_out_module, underlying_model
from .unlearning import UnlearningConfig, UnlearningTrainer


@dataclass
class RMUConfig(UnlearningConfig):
    r"""
    Configuration class for the [`RMUTrainer`].

    ``L = γ · mean_b (1/|M_b|) Σ_t (1/d)‖h_t - c·û‖² + α · L_retain`` on the output ``h`` of decoder layer
    ``rmu_layer``; ``û`` is a random unit vector drawn once from ``seed`` (so a resumed run draws the same one).
    Defaults follow the original code (``rmu/unlearn.py``): layer 7, c = 20, α = 100, lr 5e-5, only the MLP
    output projections of layers 5-7 train.

    Parameters:
        rmu_layer (`int`, *optional*, defaults to `7`):
            Decoder layer whose output is steered.
        steering_coeff (`float`, *optional*, defaults to `20.0`):
            Norm c of the target activation ``c·û``.
        trainable_layers (`list[int]` or `None`, *optional*, defaults to `None`):
            Layers whose MLP output projection trains; `None` means ``rmu_layer - 2 .. rmu_layer``.
        retain_loss (`str`, *optional*, defaults to `"embed_diff"`):
            `"embed_diff"` (activation MSE to the reference at ``rmu_layer``), `"nll"`, `"kl"` or `"none"`.
        positions (`str`, *optional*, defaults to `"scored"`):
            Token positions the activation distances average over: `"scored"` (those with a label, i.e. the
            answer of prompt-completion data, as open-unlearning's RMU; every token of plain text) or `"all"`
            (every attended token, the prompt included).
    """

    rmu_layer: int = field(default=7, metadata={"help": "Decoder layer whose output is steered."})
    steering_coeff: float = field(default=20.0, metadata={"help": "Norm c of the steering target c*u."})
    trainable_layers: list[int] | None = field(
        default=None, metadata={"help": "Layers whose MLP output projection trains (default: rmu_layer-2..rmu_layer)."}
    )
    retain_loss: str = field(
        default="embed_diff", metadata={"help": "Retain term: 'embed_diff', 'nll', 'kl' or 'none'."}
    )
    retain_weight: float = field(default=100.0, metadata={"help": "Weight α of the retain term (RMU code: 100)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Initial learning rate for AdamW."})
    positions: str = field(
        default="scored",
        metadata={"help": "Positions the activation distances average over: 'scored' (labelled tokens) or 'all'."},
    )

    retain_losses: ClassVar[tuple[str, ...]] = ("none", "nll", "kl", "embed_diff")

    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        **UnlearningConfig.value_ranges,
        "steering_coeff": (0.0, False, "the norm of the steering target"),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.positions not in ("scored", "all"):
            raise ValueError(f"RMUConfig.positions={self.positions!r}: choose 'scored' (labelled tokens) or 'all'")
        layers = self.resolved_trainable_layers()
        if self.rmu_layer < 0 or not layers or min(layers) > self.rmu_layer:
            raise ValueError(
                f"RMUConfig: rmu_layer={self.rmu_layer}, trainable_layers={layers}: RMU steers the output of layer "
                "rmu_layer, so at least one trainable layer must be at or below it (and rmu_layer >= 0); e.g. "
                f"trainable_layers={[max(self.rmu_layer - 2, 0), self.rmu_layer]}"
            )

    def resolved_trainable_layers(self) -> list[int]:
        if self.trainable_layers is not None:
            return list(self.trainable_layers)
        return [layer for layer in range(self.rmu_layer - 2, self.rmu_layer + 1) if layer >= 0]


class RMUTrainer(UnlearningTrainer):
    """RMU: scramble the forget set's representation at one layer, keep the retain set's.

    Example:
        >>> trainer = RMUTrainer(model, RMUConfig(rmu_layer=7), train_dataset=forget, retain_dataset=retain)
        >>> trainer.train()
    """

    config_class = RMUConfig
    method_name = "rmu"
    forget_normalization = "sequences"
    plain_forget_forward = False  # a layer activation, the forward stopped there
    _tag_names = ["hf_unlearn", "unlearning", "rmu"]

    @classmethod
    def uses_reference(cls, args):
        return args.retain_loss in ("kl", "embed_diff")

    def _configure_model(self, model: nn.Module, args: RMUConfig) -> None:
        if is_peft_model(model):
            raise ValueError("RMU trains the MLP output projections directly: pass peft_config=None")
        num_layers = len(decoder_layers(model))
        layers = args.resolved_trainable_layers()
        if not 0 <= args.rmu_layer < num_layers or any(not 0 <= layer < num_layers for layer in layers):
            raise ValueError(
                f"rmu_layer={args.rmu_layer} / trainable_layers={layers} do not fit a model with {num_layers} "
                f"decoder layers: choose layers in [0, {num_layers - 1}]"
            )
        # Freeze first, so the optimizer (built later by the Trainer) only ever sees these weights.
        model.requires_grad_(False)
        for layer in layers:
            mlp_out_module(model, layer).requires_grad_(True)
        hidden_size = model.get_input_embeddings().weight.shape[1]
        generator = torch.Generator().manual_seed(args.seed)
        direction = torch.rand(hidden_size, generator=generator)
        self.control_vector = direction / direction.norm()

    def layer_activations(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Output of decoder layer ``rmu_layer`` on ``batch``.

        The layers above ``rmu_layer`` and the LM head are skipped on an unwrapped model (an exception leaves the
        forward once the activation is captured; its autograd graph is intact). DDP / DeepSpeed wrappers expect a
        complete forward, so wrapped models run to the end.
        """
        layer, stop = self.args.rmu_layer, underlying_model(model) is model
        with record_activations(model, "residual", [layer], detach=False, stop=stop) as acts:
            try:
                self.forward_logits(model, batch)
            except StopForward:
                pass
        return acts[layer]

    def compute_forget_loss(self, model, inputs):
        hidden = self.layer_activations(model, inputs)
        target = self.args.steering_coeff * self.control_vector.to(hidden.device)
        loss = losses.embedding_mse(hidden, target, self._positions(inputs))
        return loss, {"forget_activation_norm": hidden.float().norm(dim=-1).mean()}

    def retain_normalization(self) -> str:
        return "sequences" if self.args.retain_loss == "embed_diff" else "tokens"

    def compute_retain_loss(self, model, retain):
        if self.args.retain_loss != "embed_diff":
            return super().compute_retain_loss(model, retain)
        hidden = self.layer_activations(model, retain)
        with self.reference() as ref:
            ref_hidden = self.layer_activations(ref, retain)
        return losses.embedding_mse(hidden, ref_hidden, self._positions(retain)), {}

    def _positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.args.positions == "all":
            return batch["attention_mask"]
        return (batch["labels"] != losses.IGNORE_INDEX) & batch["attention_mask"].bool()
