"""UNDIAL: self-distillation towards the reference with the gold token's logit lowered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import losses
from .unlearning import UnlearningConfig, UnlearningTrainer


@dataclass
class UNDIALConfig(UnlearningConfig):
    r"""
    Configuration class for the [`UNDIALTrainer`].

    Defaults (UNDIAL's published config): β = 10, γ = 1, no retain term (α = 0), lr 1e-4.

    Parameters:
        beta (`float`, *optional*, defaults to `10.0`):
            Amount subtracted from the gold token's reference logit to build the distillation target.
    """

    beta: float = field(default=10.0, metadata={"help": "Amount subtracted from the gold token's reference logit."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Initial learning rate for AdamW."})
    retain_loss: str = field(default="none", metadata={"help": "Retain term: 'none' (UNDIAL default), 'nll' or 'kl'."})

    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        **UnlearningConfig.value_ranges,
        "beta": (0.0, False, "with beta = 0 the target is the reference itself: distillation, nothing unlearned"),
    }

class UNDIALTrainer(UnlearningTrainer):
    """UNDIAL: cross-entropy to ``softmax(z_ref - β·e_y)`` over the scored forget positions.

    Example:
        >>> trainer = UNDIALTrainer(model, UNDIALConfig(max_steps=10), train_dataset=forget)
        >>> trainer.train()
    """

    config_class = UNDIALConfig
    method_name = "undial"
    forget_normalization = "tokens"
    forget_uses_reference = True
    _tag_names = ["hf_unlearn", "unlearning", "undial"]

    def compute_forget_loss(self, model, inputs):
        logits = self.forward_logits(model, inputs)
        with self.reference() as ref:
            ref_logits = self.forward_logits(ref, inputs)
        loss = losses.undial_loss(logits, ref_logits, inputs["labels"], self.args.beta)
        return loss, {"forget_nll": losses.token_nll(logits.detach(), inputs["labels"])}
