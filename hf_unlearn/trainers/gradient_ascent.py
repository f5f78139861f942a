"""Gradient ascent (GA) and gradient difference (GD): raise the forget set's negative log-likelihood."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import losses
from .unlearning import UnlearningConfig, UnlearningTrainer


@dataclass
class GradAscentConfig(UnlearningConfig):
    r"""
    Configuration class for the [`GradAscentTrainer`]: ``L = -γ · CE_θ(forget)``, no retain term by default.

    Parameters:
        retain_loss (`str`, *optional*, defaults to `"none"`):
            Plain gradient ascent has no retain term; `"nll"` turns it into gradient difference.
    """

    retain_loss: str = field(
        default="none", metadata={"help": "Retain term: 'none' (plain gradient ascent), 'nll' or 'kl'."}
    )


class GradAscentTrainer(UnlearningTrainer):
    """Gradient ascent on the forget set: minimise ``-CE_θ(forget)`` (a token mean over the step).

    Unbounded below: pair it with a retain term (see [`GradDiffTrainer`]), few steps, or ``max_grad_norm``.

    Example:
        >>> trainer = GradAscentTrainer(model, GradAscentConfig(max_steps=10), train_dataset=forget_texts)
        >>> trainer.train()
    """

    config_class = GradAscentConfig
    method_name = "grad_ascent"
    forget_normalization = "tokens"
    _tag_names = ["hf_unlearn", "unlearning", "grad-ascent"]

    def compute_forget_loss(self, model, inputs):
        nll = losses.token_nll(self.forward_logits(model, inputs), inputs["labels"])
        return -nll, {"forget_nll": nll}


@dataclass
class GradDiffConfig(UnlearningConfig):
    r"""
    Configuration class for the [`GradDiffTrainer`]: ``L = -γ · CE_θ(forget) + α · L_retain``.

    Defaults γ = α = 1 with an NLL retain term (open-unlearning). ConceptVectors' variant is α = 1.5.
    """


class GradDiffTrainer(GradAscentTrainer):
    """Gradient difference: ascent on the forget set, descent on the retain set.

    Example:
        >>> trainer = GradDiffTrainer(model, GradDiffConfig(max_steps=10), train_dataset=forget, retain_dataset=retain)
        >>> trainer.train()
    """

    config_class = GradDiffConfig
    method_name = "grad_diff"
    _tag_names = ["hf_unlearn", "unlearning", "grad-diff"]
