"""IdkDPO: DPO with the refusal (or alternate) answer preferred over the answer to forget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import losses
from .unlearning import UnlearningConfig, UnlearningTrainer


@dataclass
class IdkDPOConfig(UnlearningConfig):
    r"""
    Configuration class for the [`IdkDPOTrainer`]: ``L = γ · L_DPO(chosen ≻ rejected) + α · L_retain``.

    The forget set has columns ``prompt``, ``chosen`` (e.g. "I don't know.") and ``rejected`` (the answer to
    forget). The loss is the sigmoid DPO loss times ``2/β`` by default, as open-unlearning's IdkDPO (whose
    reference numbers this reproduces: at β = 0.1 the forget term is 20x stronger against the retain term than
    TRL's unscaled loss); ``loss_scale="trl"`` drops the factor.

    Parameters:
        beta (`float`, *optional*, defaults to `0.1`):
            Inverse temperature β of the DPO loss.
        loss_scale (`str`, *optional*, defaults to `"open_unlearning"`):
            `"open_unlearning"` (DPO loss × 2/β, open-unlearning's IdkDPO) or `"trl"` (TRL's DPO loss as is).
    """

    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the DPO loss."})
    loss_scale: str = field(
        default="open_unlearning",
        metadata={"help": "'open_unlearning' (DPO loss x 2/beta, the reference's IdkDPO) or 'trl' (no factor)."},
    )

    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        **UnlearningConfig.value_ranges,
        "beta": (0.0, False, "the DPO inverse temperature"),
    }

    def __post_init__(self):
        if self.loss_scale not in ("open_unlearning", "trl"):
            raise ValueError(f"loss_scale={self.loss_scale!r}: choose 'open_unlearning' (x 2/beta) or 'trl'")
        super().__post_init__()


def _pad_to(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return F.pad(t, (0, length - t.shape[1]), value=value)


def concatenated_inputs(batch: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, padded to one length, so the pair costs one forward pass."""
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "labels": losses.IGNORE_INDEX}
    return {
        key: torch.cat([_pad_to(batch[f"{side}_{key}"], length, value) for side in ("chosen", "rejected")])
        for key, value in pad_values.items()
    }


class IdkDPOTrainer(UnlearningTrainer):
    """IdkDPO: prefer the refusal / alternate answer (``chosen``) over the answer to forget (``rejected``).

    Example:
        >>> trainer = IdkDPOTrainer(model, IdkDPOConfig(max_steps=10), train_dataset=pairs, retain_dataset=retain)
        >>> trainer.train()
    """

    config_class = IdkDPOConfig
    method_name = "idk_dpo"
    forget_normalization = "sequences"
    forget_uses_reference = True
    preference = True
    plain_forget_forward = False  # chosen and rejected run as one pair pass
    ref_log_prob_columns = ("ref_chosen_logps", "ref_rejected_logps")
    _tag_names = ["hf_unlearn", "unlearning", "idk-dpo"]

    def _pair_log_probs(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        joint = concatenated_inputs(batch, self.processing_class.pad_token_id)
        logps, _ = losses.sequence_log_probs(self.forward_logits(model, joint), joint["labels"])
        return logps.chunk(2)

    def reference_sequence_log_probs(self, batch):
        with self.reference() as ref:
            chosen, rejected = self._pair_log_probs(ref, batch)
        return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}

    def compute_forget_loss(self, model, inputs):
        chosen, rejected = self._pair_log_probs(model, inputs)
        ref = inputs if "ref_chosen_logps" in inputs else self.reference_sequence_log_probs(inputs)
        ref_chosen, ref_rejected = ref["ref_chosen_logps"], ref["ref_rejected_logps"]
        loss = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.args.beta)
        if self.args.loss_scale == "open_unlearning":
            loss = loss * (2.0 / self.args.beta)
        chosen_reward = self.args.beta * (chosen - ref_chosen)
        rejected_reward = self.args.beta * (rejected - ref_rejected)
        return loss, {
            "forget_logps": rejected.mean(),
            "chosen_logps": chosen.mean(),
            "rewards_chosen": chosen_reward.mean(),
            "rewards_rejected": rejected_reward.mean(),
            "rewards_margin": (chosen_reward - rejected_reward).mean(),
        }
