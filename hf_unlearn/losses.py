"""Pure tensor functions for the unlearning objectives.

Conventions (the Hugging Face causal-LM ones):

* ``logits`` have shape ``(B, T, V)`` and ``labels`` shape ``(B, T)``, aligned with ``input_ids``; ``-100``
  marks positions that are not scored. Labels are shifted *inside* these functions: the logits at position
  ``t`` predict ``labels[:, t + 1]``.
* Log-softmax is always taken in float32, whatever the dtype of the logits.
* A mean over an empty set (a batch with no scored token) is defined as ``0`` so that a fully padded
  micro-batch contributes nothing instead of ``NaN``.

Every function returns plain tensors and has no side effect; the trainers only combine them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "dpo_loss",
    "embedding_mse",
    "kl_divergence",
    "masked_mean",
    "npo_loss",
    "satimp_loss",
    "sequence_log_probs",
    "shift_labels",
    "simnpo_loss",
    "token_log_probs",
    "undial_loss",
    "wga_loss",
]


def shift_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align ``logits[:, :-1]`` with ``labels[:, 1:]``.

    Returns ``(logits, targets, mask)`` where ``targets`` has ``-100`` replaced by ``0`` (safe to gather) and
    ``mask`` is ``True`` exactly where a prediction is scored.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must share (batch, sequence) dimensions"
        )
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    targets = labels.masked_fill(~mask, 0)
    return logits, targets, mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true; ``0`` (with gradient) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``log p(y_t | y_<t)`` for the scored positions.

    Returns ``(log_probs, mask)``, both of shape ``(B, T - 1)``; ``log_probs`` is ``0`` where ``mask`` is false.
    """
    logits, targets, mask = shift_labels(logits, labels)
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return log_probs * mask, mask


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the labelled tokens of each sequence.

    ``sum_logps[b] = Σ_{t: labels[b, t+1] != -100} log p(labels[b, t+1] | x_≤t)``; ``num_tokens[b]`` counts those
    positions. Divide the two for the per-token average (SimNPO).
    """
    log_probs, mask = token_log_probs(logits, labels)
    return log_probs.sum(-1), mask.sum(-1)


def npo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al. 2024).

    ``L = mean_i -(2/β) · log σ(-β · (log π_θ(y_i|x_i) - log π_ref(y_i|x_i)))`` with sequence-summed log-probs.
    At ``π_θ = π_ref`` it equals ``(2/β)·log 2``.
    """
    _check_beta(beta)
    return (-(2.0 / beta) * F.logsigmoid(-beta * (policy_logps - ref_logps))).mean()


def simnpo_loss(policy_avg_logps: torch.Tensor, beta: float = 4.5, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO.

    ``L = mean_i -(2/β) · log σ(-β · avg_logp_i - γ)``, ``avg_logp_i`` the mean token log-prob of sequence ``i``
    and ``γ`` the reward margin (``γ = β·δ`` in the paper's notation).
    """
    _check_beta(beta)
    return (-(2.0 / beta) * F.logsigmoid(-beta * policy_avg_logps - gamma)).mean()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Sigmoid DPO loss (Rafailov et al. 2023), TRL's convention (no ``2/β`` factor).

    ``L = mean_i -log σ(β · ((π_c - ref_c) - (π_r - ref_r)))``. For unlearning, *chosen* is the alternate or
    refusal answer and *rejected* the answer to forget. open-unlearning's definition is this times ``2/β``.
    """
    _check_beta(beta)
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (-F.logsigmoid(beta * margin)).mean()


def kl_divergence(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``KL(π_ref ‖ π_θ)`` over the full vocabulary, averaged over the scored (non ``-100``) positions.

    Positions are those of the shifted labels, so padding and prompt tokens never count.
    """
    policy_logits, _, mask = shift_labels(policy_logits, labels)
    ref_logits = ref_logits[:, :-1, :]
    policy_logp = torch.log_softmax(policy_logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    per_position = (ref_logp.exp() * (ref_logp - policy_logp)).sum(-1)
    return masked_mean(per_position, mask)


def undial_loss(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float = 10.0):
    """UNDIAL (Dong et al. 2024): self-distillation towards the reference with the gold logit lowered by ``β``.

    ``q_t = softmax(z_t^ref - β·e_{y_t})`` and ``L = mean_{t∈M} -Σ_v q_t(v) · log π_θ(v|s_t)``, ``M`` the scored
    positions of the shifted labels (the released code averages over padding and hits token ``V-100``).
    """
    policy_logits, targets, mask = shift_labels(policy_logits, labels)
    ref_logits = ref_logits[:, :-1, :].float()
    # scatter_add instead of one_hot: a (B, T, V) one-hot tensor costs gigabytes at a 128k vocabulary.
    lowered = ref_logits.scatter_add(
        -1, targets.unsqueeze(-1), ref_logits.new_full(targets.unsqueeze(-1).shape, -beta)
    )
    target_probs = torch.softmax(lowered, dim=-1)
    policy_logp = torch.log_softmax(policy_logits.float(), dim=-1)
    per_position = -(target_probs * policy_logp).sum(-1)
    return masked_mean(per_position, mask)


def wga_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Weighted gradient ascent (WGA): ``L = -(1/|A|) Σ_{t∈A} sg(p_t^β) · l_t`` with ``l_t = -log p_t``.

    Minimising it raises the NLL of confident tokens more than that of already-forgotten ones.
    """
    log_probs, mask = token_log_probs(logits, labels)
    weights = torch.exp(beta * log_probs).detach()
    return -masked_mean(weights * -log_probs, mask)


def satimp_loss(logits: torch.Tensor, labels: torch.Tensor, beta1: float = 5.0, beta2: float = 1.0) -> torch.Tensor:
    """SatImp: ``L = -(1/|A|) Σ_{t∈A} sg(p_t^β1 · (1 - p_t)^β2) · l_t`` with ``l_t = -log p_t``."""
    log_probs, mask = token_log_probs(logits, labels)
    probs = log_probs.exp()
    weights = (probs.pow(beta1) * (1.0 - probs).pow(beta2)).detach()
    return -masked_mean(weights * -log_probs, mask)


def embedding_mse(hidden: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """RMU's activation distance: ``mean_b (1/|M_b|) Σ_{t∈M_b} (1/d) ‖h_{b,t} - target_{b,t}‖²``.

    ``target`` broadcasts against ``hidden`` (``c·û`` for the forget term, the reference activations for the
    retain term); ``M_b`` are the attended tokens of sequence ``b``. Computed in float32.
    """
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    mask = attention_mask.to(per_token.dtype)
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_sequence.mean()


def _check_beta(beta: float) -> None:
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (got {beta}); it is the inverse temperature of the loss")
