"""Pure tensor functions for the unlearning and early-exit objectives.

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
    "consistentee_rewards",
    "dpo_loss",
    "early_exit_loss",
    "embedding_mse",
    "exit_layer_weights",
    "kl_divergence",
    "masked_mean",
    "memorized_layers",
    "npo_loss",
    "policy_warmup_loss",
    "reinforce_loss",
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


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the scored tokens of the batch (the causal-LM cross-entropy)."""
    log_probs, mask = token_log_probs(logits, labels)
    return -masked_mean(log_probs, mask)


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
    and ``γ`` the reward margin (open-unlearning's ``γ = β·δ``, δ its margin).
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
    retain term); ``M_b`` the positions of sequence ``b`` the mask selects. Computed in float32.
    """
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    mask = attention_mask.to(per_token.dtype)
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_sequence.mean()


def exit_layer_weights(exit_layers: list[int], weighting: str = "depth") -> torch.Tensor:
    """Weights of the exits in the multi-exit loss, summing to 1: ``"uniform"``, or ``"depth"`` (∝ the exit layer,
    as PABEE and ConsistentEE's first stage: ``w_k = k / Σ_j j``)."""
    layers = torch.tensor(exit_layers, dtype=torch.float32)
    if weighting == "uniform":
        weights = torch.ones_like(layers)
    elif weighting == "depth":
        weights = layers
    else:
        raise ValueError(f"exit weighting {weighting!r} is unknown; choose 'uniform' or 'depth'")
    return weights / weights.sum()


def early_exit_loss(exit_token_losses: torch.Tensor, weights: torch.Tensor, num_items: torch.Tensor | float):
    """Weighted multi-exit loss ``Σ_k w_k · (1/N) Σ_t l_{k,t}``.

    ``exit_token_losses`` is ``(num_exits, ...)`` with unscored positions already 0; ``N`` is the number of scored
    tokens (of the whole optimizer step, so that gradient accumulation gives the full-batch update).
    """
    per_exit = exit_token_losses.flatten(1).sum(-1)
    return (weights.to(per_exit) * per_exit).sum() / num_items


def memorized_layers(exit_correct: torch.Tensor, exit_layers: list[int]) -> torch.Tensor:
    """ConsistentEE's memorized layer of each token: the shallowest exit from which every deeper exit predicts it.

    ``m = min{ l : argmax f_k = y for every exit k ≥ l }``, and ``m = L`` (the last exit) when the last exit is
    wrong. ``exit_correct`` is ``(num_exits, ...)`` in the order of ``exit_layers`` (ascending, last = L).
    """
    if exit_correct.shape[0] != len(exit_layers):
        raise ValueError(f"exit_correct has {exit_correct.shape[0]} exits, exit_layers {len(exit_layers)}")
    # correct from exit j to the last one: a reversed running AND.
    suffix = exit_correct.flip(0).int().cumprod(0).flip(0).bool()
    # argmax returns the first maximum: the shallowest exit of the all-correct suffix.
    first = torch.where(suffix.any(0), suffix.int().argmax(0), len(exit_layers) - 1)
    return torch.tensor(exit_layers, device=exit_correct.device)[first]


def consistentee_rewards(
    exit_losses: torch.Tensor,
    exit_layers: torch.Tensor,
    memorized: torch.Tensor,
    num_layers: int,
    cost_coefficient: float,
    cost_shape: str = "layers",
    accuracy_weight: float = 1.0,
) -> torch.Tensor:
    """ConsistentEE's terminal reward of each token: ``R = -a · CE_e - c · (1 - m/L) · cost(e)``.

    ``exit_losses`` is the cross-entropy of the token's exit (or any per-token loss, e.g. 1 for a wrong top-1 token
    and 0 for a right one), ``exit_layers`` its exit layer ``e`` and
    ``memorized`` its memorized layer ``m`` (all the same shape, aligned: the same token in each). ``cost(e)`` is
    ``e`` (``"layers"``), ``e / L`` (``"fraction"``) or ``log e`` (``"log"``). Easy tokens (small ``m``) pay the full
    depth cost; tokens the model never gets right (``m = L``) are scored on accuracy alone.
    """
    depth = exit_layers.to(exit_losses.dtype)
    if cost_shape == "layers":
        cost = depth
    elif cost_shape == "fraction":
        cost = depth / num_layers
    elif cost_shape == "log":
        cost = depth.log()
    else:
        raise ValueError(f"cost_shape {cost_shape!r} is unknown; choose 'layers', 'fraction' or 'log'")
    hardness_weight = 1.0 - memorized.to(exit_losses.dtype) / num_layers
    return -accuracy_weight * exit_losses - cost_coefficient * hardness_weight * cost


def policy_warmup_loss(
    exit_probs: torch.Tensor,
    exit_layers: list[int],
    memorized: torch.Tensor,
    mask: torch.Tensor,
    num_items: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Supervised warm start of an exit policy: binary cross-entropy of ``p_k`` (the policy's exit probability at
    internal exit ``k``) against "the token is memorized by exit ``k``" (``k >= m``: this exit and every deeper one
    are right), summed over the exits and averaged over the ``N`` scored tokens.

    ``exit_probs`` is ``(num_internal_exits, ...)`` in the order of ``exit_layers``; ``memorized`` and ``mask`` have
    the trailing shape. Thresholding the trained ``p_k`` at ``τ`` exits where the estimated chance that nothing deeper
    would change the token is above ``τ``.
    """
    if exit_probs.shape[0] != len(exit_layers):
        raise ValueError(f"exit_probs has {exit_probs.shape[0]} exits, exit_layers {len(exit_layers)}")
    layers = torch.tensor(exit_layers, device=exit_probs.device).view(-1, *([1] * memorized.dim()))
    targets = (layers >= memorized.unsqueeze(0)).to(torch.float32)
    probs = exit_probs.float().clamp(1e-6, 1 - 1e-6)
    per_token = torch.nn.functional.binary_cross_entropy(probs, targets, reduction="none") * mask.unsqueeze(0)
    if num_items is None:
        num_items = mask.sum().clamp(min=1)
    return per_token.sum() / num_items


def reinforce_loss(
    rewards: torch.Tensor,
    log_probs: torch.Tensor,
    mask: torch.Tensor,
    baseline: str = "mean",
    num_items: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """REINFORCE over ``K`` rollouts of the same tokens: ``L = -(1/(N·K)) Σ_i Σ_k (R_ik - b_ik) · log P(e_ik)``.

    ``rewards``, ``log_probs`` and ``mask`` are ``(K, ...)``: rollout ``k`` of token ``i`` at ``[k, i]``. The
    baseline is the mean reward over the ``K`` rollouts of the token (``"mean"``, ConsistentEE) or over the other
    ``K - 1`` (``"leave_one_out"``, RLOO, unbiased). ``N`` defaults to the number of scored tokens.
    """
    num_rollouts = rewards.shape[0]
    if num_rollouts < 2:
        raise ValueError("REINFORCE with a group baseline needs at least 2 rollouts per token")
    total = rewards.sum(0, keepdim=True)
    if baseline == "mean":
        base = total / num_rollouts
    elif baseline == "leave_one_out":
        base = (total - rewards) / (num_rollouts - 1)
    else:
        raise ValueError(f"baseline {baseline!r} is unknown; choose 'mean' or 'leave_one_out'")
    advantage = (rewards - base).detach() * mask
    if num_items is None:
        num_items = mask[0].sum().clamp(min=1)
    return -(advantage * log_probs).sum() / (num_items * num_rollouts)


def _check_beta(beta: float) -> None:
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (got {beta}); it is the inverse temperature of the loss")
