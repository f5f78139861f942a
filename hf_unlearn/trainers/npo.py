"""Negative Preference Optimization (NPO) and its reference-free, length-normalised variant SimNPO."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import losses
from .unlearning import UnlearningConfig, UnlearningTrainer


@dataclass
class NPOConfig(UnlearningConfig):
    r"""
    Configuration class for the [`NPOTrainer`]: ``L = γ · L_NPO(forget) + α · L_retain``.

    Parameters:
        beta (`float`, *optional*, defaults to `0.1`):
            Inverse temperature β of the NPO loss (Zhang et al. 2024; open-unlearning's default).
    """

    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the NPO loss."})

    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        **UnlearningConfig.value_ranges,
        "beta": (0.0, False, "NPO's inverse temperature"),
    }


class NPOTrainer(UnlearningTrainer):
    """NPO: ``-(2/β)·log σ(-β·(log π_θ(y|x) - log π_ref(y|x)))`` on sequence-summed forget log-probs.

    Example:
        >>> trainer = NPOTrainer(model, NPOConfig(max_steps=10), train_dataset=forget, retain_dataset=retain)
        >>> trainer.train()
    """

    config_class = NPOConfig
    method_name = "npo"
    forget_normalization = "sequences"
    forget_uses_reference = True
    ref_log_prob_columns = ("ref_logps",)
    _tag_names = ["hf_unlearn", "unlearning", "npo"]

    def reference_sequence_log_probs(self, batch):
        with self.reference() as ref:
            logps, _ = losses.sequence_log_probs(self.forward_logits(ref, batch), batch["labels"])
        return {"ref_logps": logps}

    def compute_forget_loss(self, model, inputs):
        logps, num_tokens = losses.sequence_log_probs(self.forward_logits(model, inputs), inputs["labels"])
        ref_logps = (
            inputs["ref_logps"] if "ref_logps" in inputs else self.reference_sequence_log_probs(inputs)["ref_logps"]
        )
        loss = losses.npo_loss(logps, ref_logps, self.args.beta)
        return loss, {
            "forget_logps": logps.mean(),
            "forget_ref_logps": ref_logps.mean(),
            "forget_log_ratio": (logps - ref_logps).mean(),
            "forget_nll": -(logps.sum() / num_tokens.sum().clamp(min=1)),
        }


@dataclass
class SimNPOConfig(UnlearningConfig):
    r"""
    Configuration class for the [`SimNPOTrainer`]: ``L = γ · L_SimNPO(forget) + α · L_retain``.

    Defaults from SimNPO's TOFU forget10 setting (as shipped by open-unlearning): β = 4.5, γ = 0.125, α = 1,
    margin 0.

    Parameters:
        beta (`float`, *optional*, defaults to `4.5`):
            Inverse temperature β.
        simnpo_gamma (`float`, *optional*, defaults to `0.0`):
            Reward margin in ``log σ(-β·avg_logp - simnpo_gamma)``; in open-unlearning's notation
            ``simnpo_gamma = β·δ`` (δ its margin).
    """

    beta: float = field(default=4.5, metadata={"help": "Inverse temperature of the SimNPO loss."})
    simnpo_gamma: float = field(default=0.0, metadata={"help": "Reward margin of the SimNPO loss."})
    forget_weight: float = field(default=0.125, metadata={"help": "Weight γ of the forget term (SimNPO: 0.125)."})

    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        **UnlearningConfig.value_ranges,
        "beta": (0.0, False, "SimNPO's inverse temperature"),
    }


class SimNPOTrainer(UnlearningTrainer):
    """SimNPO: NPO without a reference, on the per-token average log-prob of each forget sequence.

    Example:
        >>> trainer = SimNPOTrainer(model, SimNPOConfig(max_steps=10), train_dataset=forget, retain_dataset=retain)
        >>> trainer.train()
    """

    config_class = SimNPOConfig
    method_name = "simnpo"
    forget_normalization = "sequences"
    _tag_names = ["hf_unlearn", "unlearning", "simnpo"]

    def compute_forget_loss(self, model, inputs):
        logps, num_tokens = losses.sequence_log_probs(self.forward_logits(model, inputs), inputs["labels"])
        avg_logps = logps / num_tokens.clamp(min=1)
        loss = losses.simnpo_loss(avg_logps, self.args.beta, self.args.simnpo_gamma)
        return loss, {"forget_logps": logps.mean(), "forget_avg_logps": avg_logps.mean()}
