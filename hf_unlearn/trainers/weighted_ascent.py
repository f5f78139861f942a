"""Token-weighted gradient ascent: WGA and SatImp weight each forget token by a function of its probability."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import losses
from .unlearning import UnlearningConfig, UnlearningTrainer


@dataclass
class WGAConfig(UnlearningConfig):
    r"""
    Configuration class for the [`WGATrainer`]: ``L = -γ·(1/|A|) Σ sg(p_t^β)·l_t + α · L_retain``.

    Parameters:
        beta (`float`, *optional*, defaults to `1.0`):
            Exponent β of the token weight ``p_t^β``.
    """

    beta: float = field(default=1.0, metadata={"help": "Exponent of the token weight p_t^beta."})

    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        **UnlearningConfig.value_ranges,
        "beta": (0.0, True, "a negative exponent weights confident tokens down"),
    }

class WGATrainer(UnlearningTrainer):
    """Weighted gradient ascent: ascent on each forget token weighted by its (detached) probability ``p_t^β``.

    Example:
        >>> trainer = WGATrainer(model, WGAConfig(max_steps=10), train_dataset=forget, retain_dataset=retain)
        >>> trainer.train()
    """

    config_class = WGAConfig
    method_name = "wga"
    forget_normalization = "tokens"
    _tag_names = ["hf_unlearn", "unlearning", "wga"]

    def token_weighted_loss(self, logits, labels):
        return losses.wga_loss(logits, labels, self.args.beta)

    def compute_forget_loss(self, model, inputs):
        logits = self.forward_logits(model, inputs)
        return self.token_weighted_loss(logits, inputs["labels"]), {
            "forget_nll": losses.token_nll(logits.detach(), inputs["labels"])
        }


@dataclass
class SatImpConfig(UnlearningConfig):
    r"""
    Configuration class for the [`SatImpTrainer`]: ``L = -γ·(1/|A|) Σ sg(p_t^β1·(1-p_t)^β2)·l_t + α · L_retain``.

    γ = 1, α = 0.1 as the method's authors and open-unlearning's class default say (one shipped YAML file says
    γ = 0.1, α = 1, a 100x different forget:retain ratio).

    Parameters:
        beta1 (`float`, *optional*, defaults to `5.0`):
            Exponent of ``p_t``.
        beta2 (`float`, *optional*, defaults to `1.0`):
            Exponent of ``1 - p_t``.
    """

    beta1: float = field(default=5.0, metadata={"help": "Exponent of p_t in the token weight."})
    beta2: float = field(default=1.0, metadata={"help": "Exponent of 1 - p_t in the token weight."})
    forget_weight: float = field(default=1.0, metadata={"help": "Weight γ of the forget term (SatImp's authors: 1)."})
    retain_weight: float = field(default=0.1, metadata={"help": "Weight α of the retain term (authors: 0.1)."})

    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        **UnlearningConfig.value_ranges,
        "beta1": (0.0, True, "a negative exponent inverts the weighting"),
        "beta2": (0.0, True, "a negative exponent inverts the weighting"),
    }


class SatImpTrainer(WGATrainer):
    """SatImp: token-weighted ascent with weight ``p_t^β1·(1-p_t)^β2`` (favours tokens neither known nor forgotten).

    Example:
        >>> trainer = SatImpTrainer(model, SatImpConfig(max_steps=10), train_dataset=forget, retain_dataset=retain)
        >>> trainer.train()
    """

    config_class = SatImpConfig
    method_name = "satimp"
    _tag_names = ["hf_unlearn", "unlearning", "satimp"]

    def token_weighted_loss(self, logits, labels):
        return losses.satimp_loss(logits, labels, self.args.beta1, self.args.beta2)
