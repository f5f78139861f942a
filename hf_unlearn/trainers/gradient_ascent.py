"""Gradient ascent (GA) and gradient difference (GD): raise the forget set's negative log-likelihood."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import losses
from .unlearning import UnlearningConfig, UnlearningTrainer


def forget_nll(
    trainer: UnlearningTrainer, model: nn.Module, inputs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy logits and the token-mean NLL of the forget batch."""
    logits = trainer.forward_logits(model, inputs)
    log_probs, mask = losses.token_log_probs(logits, inputs["labels"])
    return logits, -losses.masked_mean(log_probs, mask)


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
        _, nll = forget_nll(self, model, inputs)
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
