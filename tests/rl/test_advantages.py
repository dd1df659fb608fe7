"""Reward shaping, GAE, GRPO advantages and whitening against recursions written out by hand."""

import math

import pytest
import torch

from open_instruct.rl.advantages import gae, grpo_advantages, last_token_index, shape_rewards, whiten


def close(a, b, tol=1e-5):
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    assert torch.allclose(a, b, atol=tol), (a, b)


# ---------------------------------------------------------------- shape_rewards


def _rollout():
    # 3 responses, T = 4, right-padded: lengths 3, 4, 2.
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0], [-0.2, -0.4, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-1.0, -1.2, -0.8, -1.0], [-0.2, -0.1, -7.0, -7.0]])
    return mask, logp, ref


def test_last_token_index():
    mask, _, _ = _rollout()
    assert last_token_index(mask).tolist() == [2, 3, 1]
    assert last_token_index(torch.zeros(1, 3, dtype=torch.bool)).tolist() == [0]


def test_shape_rewards_places_score_and_non_eos_penalty_and_subtracts_k1():
    mask, logp, ref = _rollout()
    scores = torch.tensor([1.0, 1.0, 0.0])
    eos = torch.tensor([True, False, True])  # response 1 hit the length limit
    out = shape_rewards(scores, eos, mask, logp, ref, kl_beta=0.1)
    # k1 = logp - ref on response tokens:
    kl = [[0.5, -1.0, 0.0, 0.0], [0.0, 0.2, -0.2, 0.0], [0.0, -0.3, 0.0, 0.0]]
    close(out.kl, kl)
    close(out.seq_kl, [-0.5, 0.0, -0.3])
    expected = [
        [-0.1 * 0.5, -0.1 * -1.0, -0.1 * 0.0 + 10.0, 0.0],  # 1.0 * 10 on the last token (t = 2)
        [0.0, -0.1 * 0.2, -0.1 * -0.2, -10.0],  # no EOS: score replaced by -10 on t = 3
        [0.0, -0.1 * -0.3 + 0.0, 0.0, 0.0],  # score 0 on t = 1
    ]
    close(out.rewards, expected)
    close(out.terminal_rewards, [10.0, -10.0, 0.0])
    assert out.non_eos.tolist() == [False, True, False]
    # Padding positions get nothing, whatever the log-probs hold there.
    assert (out.rewards[~mask] == 0).all()


def test_shape_rewards_penalty_disabled_keeps_score_and_other_estimators():
    mask, logp, ref = _rollout()
    scores = torch.tensor([0.5, 1.0, 0.0])
    eos = torch.tensor([True, False, True])
    for disabled in (None, 0.0):
        out = shape_rewards(scores, eos, mask, logp, ref, kl_beta=0.0, non_eos_penalty=disabled)
        close(out.terminal_rewards, [5.0, 10.0, 0.0])
        close(out.rewards[1], [0.0, 0.0, 0.0, 10.0])
        assert out.non_eos.tolist() == [False, True, False]  # still reported
    out = shape_rewards(scores, eos, mask, logp, ref, kl_beta=1.0, verification_reward=1.0, kl_estimator="k3")
    d = -0.5  # row 0, t 0: ref - logp
    close(out.kl[0, 0], math.exp(d) - d - 1)
    assert (out.kl >= 0).all()
    close(out.rewards[0, 2], 0.5)  # k3 = 0 there; score 0.5 * 1


def test_shape_rewards_empty_response_gets_no_reward():
    mask = torch.zeros(1, 3, dtype=torch.bool)
    out = shape_rewards(
        torch.ones(1),
        torch.ones(1, dtype=torch.bool),
        mask,
        torch.zeros(1, 3),
        torch.zeros(1, 3),
        kl_beta=0.1,
    )
    assert out.rewards.abs().sum() == 0


# ---------------------------------------------------------------- GAE


def test_gae_by_hand_gamma_1():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    m = torch.ones(1, 3, dtype=torch.bool)
    gamma, lam = 1.0, 0.95
    # deltas (V after the end = 0):
    d2 = 1.0 + gamma * 0.0 - 0.7  # 0.3
    d1 = 0.0 + gamma * 0.7 - 0.6  # 0.1
    d0 = 0.0 + gamma * 0.6 - 0.5  # 0.1
    a2 = d2  # 0.3
    a1 = d1 + gamma * lam * a2  # 0.1 + 0.285 = 0.385
    a0 = d0 + gamma * lam * a1  # 0.1 + 0.36575 = 0.46575
    adv, ret = gae(r, v, m, gamma, lam)
    close(adv, [[a0, a1, a2]])
    close(adv, [[0.46575, 0.385, 0.3]])
    close(ret, [[a0 + 0.5, a1 + 0.6, a2 + 0.7]])


def test_gae_by_hand_gamma_09_four_tokens():
    r = torch.tensor([[-0.1, 0.0, -0.2, 2.0]])
    v = torch.tensor([[1.0, 0.5, -0.5, 1.5]])
    m = torch.ones(1, 4, dtype=torch.bool)
    g, lam = 0.9, 0.95
    d3 = 2.0 + g * 0.0 - 1.5  # 0.5
    d2 = -0.2 + g * 1.5 - (-0.5)  # 1.65
    d1 = 0.0 + g * -0.5 - 0.5  # -0.95
    d0 = -0.1 + g * 0.5 - 1.0  # -0.65
    a3 = d3  # 0.5
    a2 = d2 + g * lam * a3  # 1.65 + 0.4275 = 2.0775
    a1 = d1 + g * lam * a2  # -0.95 + 1.7762625 = 0.8262625
    a0 = d0 + g * lam * a1  # -0.65 + 0.706454... = 0.0564544...
    adv, ret = gae(r, v, m, g, lam)
    close(adv, [[a0, a1, a2, a3]])
    close(adv, [[0.05645444, 0.8262625, 2.0775, 0.5]])
    close(ret, [[a0 + 1.0, a1 + 0.5, a2 - 0.5, a3 + 1.5]])


def test_gae_padding_gets_zero_and_does_not_leak():
    # Row 0 = the 3-token example above followed by a padded position holding junk reward/value.
    r = torch.tensor([[0.0, 0.0, 1.0, 55.0], [0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 99.0], [0.5, 0.6, 0.7, 0.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv, ret = gae(r, v, m, 1.0, 0.95)
    close(adv, [[0.46575, 0.385, 0.3, 0.0]] * 2)
    assert adv[0, 3] == 0 and ret[0, 3] == 0
    # Same result as the unpadded row on its own.
    adv1, _ = gae(r[:1, :3], v[:1, :3], m[:1, :3], 1.0, 0.95)
    close(adv[0, :3], adv1[0])


def test_gae_skips_masked_gap_inside_a_response():
    # A masked (e.g. tool-output) position in the middle is skipped: tokens 0,1,3 form the chain.
    r = torch.tensor([[0.0, 0.0, 7.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 9.0, 0.7]])
    m = torch.tensor([[1, 1, 0, 1]], dtype=torch.bool)
    adv, _ = gae(r, v, m, 1.0, 0.95)
    close(adv, [[0.46575, 0.385, 0.0, 0.3]])


def test_gae_lambda_1_gamma_1_is_return_minus_value():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    v = torch.tensor([[0.1, 0.2, 0.3]])
    adv, ret = gae(r, v, torch.ones(1, 3), 1.0, 1.0)
    close(ret, [[6.0, 5.0, 3.0]])  # Monte-Carlo reward-to-go
    close(adv, [[5.9, 4.8, 2.7]])


# ---------------------------------------------------------------- whitening


def test_whiten_masked():
    x = torch.tensor([[1.0, 2.0, 3.0, 1000.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    # masked mean 2, Bessel var ((1 + 0 + 1) / 2) = 1
    close(whiten(x, m), [[-1.0, 0.0, 1.0, 0.0]])
    close(whiten(x, m, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]])  # mean 2 added back, std 1


# ---------------------------------------------------------------- GRPO advantages


def test_grpo_advantages_groups_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 2.0])
    adv = grpo_advantages(r, group_size=4)
    # group 0: mean 0.5, population std 0.5 -> +-1 ; group 1 all equal -> 0
    # group 2: mean 0.5, population std sqrt((3*0.25 + 2.25)/4) = sqrt(0.75)
    s = math.sqrt(0.75)
    eps = 1e-6
    hi, lo = 0.5 / (0.5 + eps), -0.5 / (0.5 + eps)
    expected = [hi, lo, lo, hi]
    expected += [0.0] * 4
    expected += [-0.5 / (s + eps)] * 3 + [1.5 / (s + eps)]
    close(adv, expected)
    assert torch.isfinite(adv).all()
    # Sample (ddof 1) std as in TRL: group 0 std = sqrt(1/3)
    adv_u = grpo_advantages(r, group_size=4, unbiased=True)
    close(adv_u[0], 0.5 / (math.sqrt(1 / 3) + eps))
    # Mean-centred only.
    close(grpo_advantages(r, 4, normalize_std=False)[:4], [0.5, -0.5, -0.5, 0.5])


def test_grpo_advantages_all_equal_groups_zero_no_nan():
    r = torch.tensor([0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 7.0, 7.0, 7.0])
    adv = grpo_advantages(r, group_size=3)
    assert adv.tolist() == [0.0] * 9
    adv1 = grpo_advantages(torch.tensor([2.0, 5.0]), group_size=1, unbiased=True)
    assert adv1.tolist() == [0.0, 0.0]  # one sample per prompt: nothing to compare with


def test_grpo_advantages_bad_group_size():
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(5), group_size=2)
