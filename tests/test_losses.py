"""Every loss against an independent hand computation (explicit Python loops over positions)."""

import math

import pytest
import torch

from hf_unlearn import losses

torch.manual_seed(0)
B, T, V = 3, 5, 7
LOGITS = torch.randn(B, T, V, dtype=torch.float64)
REF_LOGITS = torch.randn(B, T, V, dtype=torch.float64)
# -100 on a "prompt" position and on right padding; row 2 is scored only at its end.
LABELS = torch.tensor(
    [
        [1, 2, 3, 4, 5],
        [-100, 6, 0, 2, -100],
        [-100, -100, -100, 4, 1],
    ]
)


def scored_positions(labels):
    """(b, t) pairs where logits[b, t] predicts a labelled token labels[b, t + 1]."""
    return [(b, t) for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]


def log_softmax_row(row):
    m = max(row.tolist())
    z = sum(math.exp(x - m) for x in row.tolist())
    return [x - m - math.log(z) for x in row.tolist()]


def logsigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def hand_token_logps():
    out = {}
    for b, t in scored_positions(LABELS):
        out[(b, t)] = log_softmax_row(LOGITS[b, t])[int(LABELS[b, t + 1])]
    return out


def test_sequence_log_probs_matches_hand_sum():
    per_token = hand_token_logps()
    sums, counts = losses.sequence_log_probs(LOGITS, LABELS)
    for b in range(B):
        expected = sum(v for (bb, _), v in per_token.items() if bb == b)
        assert sums[b].item() == pytest.approx(expected, abs=1e-4)
        assert counts[b].item() == sum(1 for (bb, _) in per_token if bb == b)
    assert counts.tolist() == [4, 3, 2]


def test_token_nll_is_the_mean_over_every_scored_token_of_the_batch():
    per_token = hand_token_logps()
    expected = -sum(per_token.values()) / len(per_token)
    assert losses.token_nll(LOGITS, LABELS).item() == pytest.approx(expected, abs=1e-5)


def test_token_log_probs_ignores_padding_and_prompt():
    log_probs, mask = losses.token_log_probs(LOGITS, LABELS)
    assert mask.tolist() == [[True] * 4, [True, True, True, False], [False, False, True, True]]
    assert (log_probs[~mask] == 0).all()


def test_npo_loss_hand_computation_and_golden_value():
    policy = torch.tensor([-12.0, -3.5, -40.0], dtype=torch.float64)
    ref = torch.tensor([-10.0, -4.0, -41.0], dtype=torch.float64)
    beta = 0.1
    expected = sum(-(2 / beta) * logsigmoid(-beta * (p - r)) for p, r in zip(policy.tolist(), ref.tolist())) / 3
    assert losses.npo_loss(policy, ref, beta).item() == pytest.approx(expected, rel=1e-10)
    # At pi_theta = pi_ref the loss is (2/beta) log 2 = 13.86 for beta 0.1.
    assert losses.npo_loss(ref, ref, 0.1).item() == pytest.approx(20 * math.log(2), rel=1e-10)


def test_npo_gradient_at_reference_is_ascent_on_summed_nll():
    policy = torch.tensor([-12.0, -3.5], dtype=torch.float64, requires_grad=True)
    losses.npo_loss(policy, policy.detach(), beta=0.1).backward()
    # d/dlogp of -(2/b) logsig(-b (logp - ref)) at equality = 2 sigma(0) = 1, averaged over the batch.
    assert policy.grad.tolist() == pytest.approx([0.5, 0.5])


def test_simnpo_loss_hand_computation():
    avg = torch.tensor([-0.5, -2.0, -0.01], dtype=torch.float64)
    beta, gamma = 4.5, 0.3
    expected = sum(-(2 / beta) * logsigmoid(-beta * a - gamma) for a in avg.tolist()) / 3
    assert losses.simnpo_loss(avg, beta, gamma).item() == pytest.approx(expected, rel=1e-10)


def test_dpo_loss_hand_computation():
    pc, pr = torch.tensor([-5.0, -7.0]), torch.tensor([-3.0, -9.0])
    rc, rr = torch.tensor([-6.0, -7.5]), torch.tensor([-2.0, -8.0])
    beta = 0.1
    expected = (
        sum(
            -logsigmoid(beta * ((a - c) - (b - d)))
            for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())
        )
        / 2
    )
    assert losses.dpo_loss(pc, pr, rc, rr, beta).item() == pytest.approx(expected, rel=1e-6)
    assert losses.dpo_loss(rc, rr, rc, rr, beta).item() == pytest.approx(math.log(2), rel=1e-6)


def test_kl_divergence_hand_computation_masks_padding():
    positions = scored_positions(LABELS)
    total = 0.0
    for b, t in positions:
        lp, lr = log_softmax_row(LOGITS[b, t]), log_softmax_row(REF_LOGITS[b, t])
        total += sum(math.exp(r) * (r - p) for p, r in zip(lp, lr))
    expected = total / len(positions)
    assert losses.kl_divergence(LOGITS, REF_LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-5)
    # Changing logits at unscored positions (padding, prompt, last position) changes nothing.
    noisy = LOGITS.clone()
    noisy[1, 4] += 100.0
    noisy[2, 0] -= 50.0
    noisy[:, -1] += 9.0
    assert losses.kl_divergence(noisy, REF_LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-5)
    assert losses.kl_divergence(REF_LOGITS, REF_LOGITS, LABELS).item() == pytest.approx(0.0, abs=1e-6)


def test_undial_loss_hand_computation():
    beta = 10.0
    positions = scored_positions(LABELS)
    total = 0.0
    for b, t in positions:
        y = int(LABELS[b, t + 1])
        lowered = REF_LOGITS[b, t].clone()
        lowered[y] -= beta
        q = [math.exp(x) for x in log_softmax_row(lowered)]
        lp = log_softmax_row(LOGITS[b, t])
        total += -sum(qi * pi for qi, pi in zip(q, lp))
    expected = total / len(positions)
    assert losses.undial_loss(LOGITS, REF_LOGITS, LABELS, beta).item() == pytest.approx(expected, rel=1e-5)


def test_wga_and_satimp_hand_computation_and_stop_gradient():
    per_token = hand_token_logps()
    n = len(per_token)
    wga = -sum(math.exp(1.0 * lp) * -lp for lp in per_token.values()) / n
    assert losses.wga_loss(LOGITS, LABELS, beta=1.0).item() == pytest.approx(wga, rel=1e-5)
    sat = -sum((math.exp(lp) ** 5) * (1 - math.exp(lp)) ** 1 * -lp for lp in per_token.values()) / n
    assert losses.satimp_loss(LOGITS, LABELS, 5.0, 1.0).item() == pytest.approx(sat, rel=1e-5)

    # The weights are constants: the gradient is w_t times the gradient of -l_t (not of w_t * l_t).
    logits = LOGITS.clone().requires_grad_(True)
    losses.wga_loss(logits, LABELS, beta=1.0).backward()
    manual = LOGITS.clone().requires_grad_(True)
    log_probs, mask = losses.token_log_probs(manual, LABELS)
    weights = log_probs.exp().detach()
    (-(weights * -log_probs)[mask].sum() / mask.sum()).backward()
    torch.testing.assert_close(logits.grad, manual.grad)


def test_embedding_mse_hand_computation():
    hidden = torch.randn(2, 3, 4, dtype=torch.float64)
    target = torch.randn(4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    per_seq = []
    for b in range(2):
        toks = [t for t in range(3) if mask[b, t]]
        per_seq.append(sum(((hidden[b, t] - target) ** 2).mean().item() for t in toks) / len(toks))
    assert losses.embedding_mse(hidden, target, mask).item() == pytest.approx(sum(per_seq) / 2, rel=1e-5)


def test_all_masked_batch_gives_zero_not_nan():
    labels = torch.full((2, 5), -100)
    assert losses.kl_divergence(LOGITS[:2], REF_LOGITS[:2], labels).item() == 0.0
    assert losses.wga_loss(LOGITS[:2], labels).item() == 0.0


def test_bad_beta_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="beta must be > 0"):
        losses.npo_loss(torch.zeros(1), torch.zeros(1), beta=0.0)
    with pytest.raises(ValueError, match="share"):
        losses.sequence_log_probs(LOGITS, LABELS[:, :3])


def test_bf16_logits_are_scored_in_float32():
    lp32, _ = losses.sequence_log_probs(LOGITS.float(), LABELS)
    lp16, _ = losses.sequence_log_probs(LOGITS.to(torch.bfloat16), LABELS)
    assert lp16.dtype == torch.float32
    torch.testing.assert_close(lp16, lp32, atol=0.1, rtol=0.02)
