"""PPO / GRPO losses, KL estimators and helpers against numbers written out by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from open_instruct.rl.losses import (
    aggregate,
    entropy_from_logits,
    explained_variance,
    grpo_loss,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    ppo_policy_loss,
    value_loss,
)


def close(a, b, tol=1e-5):
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    assert torch.allclose(a, b, atol=tol), (a, b)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- masked helpers


def test_masked_mean_ignores_nan_at_masked_positions_and_empty_mask():
    x = t([1.0, 3.0, float("nan")])
    m = torch.tensor([[1, 1, 0]])
    close(masked_mean(x, m), 2.0)
    close(masked_mean(x, m, dim=-1), [2.0])
    close(masked_mean(x, torch.zeros_like(m)), 0.0)


def test_token_vs_seq_aggregation():
    x = t([1.0, 1.0, 1.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 0.0, 0.0])
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    close(aggregate(x, m, "token"), (1 + 1 + 1 + 4) / 4)
    close(aggregate(x, m, "seq"), (1.0 + 4.0) / 2)  # the empty third row is left out
    close(aggregate(x, m, "token", token_normalizer=10.0), 7 / 10)
    with pytest.raises(ValueError):
        aggregate(x, m, "sum")


def test_explained_variance():
    r = t([1.0, 2.0, 3.0, 100.0])
    m = torch.tensor([[1, 1, 1, 0]])
    close(explained_variance(r, r, m), 1.0)
    close(explained_variance(torch.full_like(r, 2.0), r, m), 0.0)  # constant = mean: no better than mean
    # values off by (0, 0, 1): residual var of (0,0,-1) = 1/3 (Bessel), var of returns (1,2,3) = 1.
    close(explained_variance(t([1.0, 2.0, 4.0, 0.0]), r, m), 1 - 1 / 3)
    assert math.isnan(float(explained_variance(r, torch.ones_like(r), m)))


# ---------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    logp, ref = t([-1.0, -2.0]), t([-1.5, -2.0])
    close(kl_k1(logp, ref), [[0.5, 0.0]])
    close(kl_k2(logp, ref), [[0.125, 0.0]])
    close(kl_k3(logp, ref), [[math.exp(-0.5) + 0.5 - 1, 0.0]])
    close(kl_estimate(logp, ref, "k3"), kl_k3(logp, ref))
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-20, 0), st.floats(-20, 0)), min_size=1, max_size=8))
def test_k3_nonnegative_and_zero_iff_equal(pairs):
    logp = torch.tensor([p for p, _ in pairs])
    ref = torch.tensor([r for _, r in pairs])
    k3 = kl_k3(logp, ref)
    assert (k3 >= 0).all()
    assert (kl_k3(logp, logp) == 0).all()
    assert (kl_k2(logp, ref) >= 0).all()


def test_k1_k3_unbiased_for_kl_in_expectation():
    # Sampling from p, E[k1] = E[k3] = KL(p || q).
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    kl = float((p * (p / q).log()).sum())
    logp, logq = p.log(), q.log()
    close((p * kl_k1(logp, logq)).sum(), kl)
    close((p * kl_k3(logp, logq)).sum(), kl)


# ---------------------------------------------------------------- PPO policy loss


def test_ppo_policy_loss_by_hand_with_clipping_both_signs():
    eps = 0.2
    # ratios r = exp(new - old): 1.5, 0.5, 1.1, 1.5, 0.5 ; advantages +2, +2, -1, -1, -1
    ratios = [1.5, 0.5, 1.1, 1.5, 0.5]
    adv = [2.0, 2.0, -1.0, -1.0, -1.0]
    old = torch.zeros(1, 6)
    new = torch.tensor([[math.log(r) for r in ratios] + [0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    advantages = torch.tensor([adv + [100.0]])  # the padded position must not count
    # per token: max(-A r, -A clip(r, 0.8, 1.2))
    #  A=+2, r=1.5: max(-3.0, -2.4) = -2.4   (clipped: no gain past 1+eps)
    #  A=+2, r=0.5: max(-1.0, -1.6) = -1.0   (unclipped: pessimistic side)
    #  A=-1, r=1.1: max( 1.1,  1.1) =  1.1   (inside the range)
    #  A=-1, r=1.5: max( 1.5,  1.2) =  1.5   (unclipped: pessimistic side)
    #  A=-1, r=0.5: max( 0.5,  0.8) =  0.8   (clipped: no gain below 1-eps)
    expected = [-2.4, -1.0, 1.1, 1.5, 0.8]
    out = ppo_policy_loss(new, old, advantages, mask, clip_eps=eps)
    close(out.loss, sum(expected) / 5)
    close(out.clip_fraction, 2 / 5)
    approx = sum(r - 1 - math.log(r) for r in ratios) / 5
    close(out.approx_kl, approx)
    loss, clip_fraction, approx_kl = out  # tuple unpacking works
    assert loss is out.loss


def test_ppo_policy_loss_seq_aggregation_and_sequence_advantages():
    new = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    old = torch.zeros_like(new)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -3.0])  # [N]: broadcast over tokens
    # r = 1 everywhere: per-token loss = -A.  token: (-1 -1 -1 + 3)/4 = 0 ; seq: (-1 + 3)/2 = 1
    close(ppo_policy_loss(new, old, adv, mask, agg="token").loss, 0.0)
    close(ppo_policy_loss(new, old, adv, mask, agg="seq").loss, 1.0)


def test_ppo_clip_higher():
    new = torch.tensor([[math.log(1.25)]])
    out = ppo_policy_loss(
        new, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2, clip_eps_high=0.28
    )
    close(out.loss, -1.25)  # within 1.28: not clipped
    close(out.clip_fraction, 0.0)


def test_ppo_gradient_pushes_positive_advantage_logp_up():
    new = torch.zeros(1, 3, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0]])
    ppo_policy_loss(new, torch.zeros(1, 3), adv, mask).loss.backward()
    assert torch.isfinite(new.grad).all()
    assert new.grad[0, 0] < 0  # gradient descent raises logp of the positive-advantage token
    assert new.grad[0, 1] > 0  # and lowers it for the negative one
    assert new.grad[0, 2] == 0  # padding gets no gradient
    # Once clipped (r > 1 + eps with A > 0) the token gets no gradient.
    new2 = torch.full((1, 1), math.log(1.5), requires_grad=True)
    ppo_policy_loss(new2, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1)).loss.backward()
    assert new2.grad.item() == 0.0


# ---------------------------------------------------------------- value loss


def test_value_loss_by_hand():
    c = 0.2
    old = t([0.0, 0.0, 0.0, 1.0])
    new = t([0.5, 0.1, -0.5, 5.0])
    ret = t([1.0, 1.0, -1.0, 9.0])
    mask = torch.tensor([[1, 1, 1, 0]])
    # tok0: unclipped (0.5-1)^2 = 0.25 ; clipped V = 0 + 0.2 = 0.2 -> (0.2-1)^2 = 0.64 ; max 0.64 (clipped)
    # tok1: unclipped (0.1-1)^2 = 0.81 ; V inside range -> same 0.81 ; max 0.81
    # tok2: unclipped (-0.5+1)^2 = 0.25 ; clipped V = -0.2 -> (-0.2+1)^2 = 0.64 ; max 0.64 (clipped)
    expected = 0.5 * (0.64 + 0.81 + 0.64) / 3
    out = value_loss(new, old, ret, mask, clip=c)
    close(out.loss, expected)
    close(out.clip_fraction, 2 / 3)
    # clip on the other side: the clipped value is *closer* to the return -> unclipped one is larger
    out2 = value_loss(t([2.0]), t([0.0]), t([0.5]), torch.ones(1, 1), clip=c)
    close(out2.loss, 0.5 * (2.0 - 0.5) ** 2)  # max((1.5)^2, (0.2-0.5)^2 = 0.09)
    close(out2.clip_fraction, 0.0)
    out3 = value_loss(new, old, ret, mask, clip=None)
    close(out3.loss, 0.5 * (0.25 + 0.81 + 0.25) / 3)


def test_value_loss_gradient_finite():
    new = t([0.5, 0.1, -0.5]).requires_grad_()
    value_loss(new, torch.zeros(1, 3), t([1.0, 1.0, -1.0]), torch.ones(1, 3)).loss.backward()
    assert torch.isfinite(new.grad).all()
    assert new.grad[0, 1] < 0  # V below its return: descent raises V


# ---------------------------------------------------------------- GRPO loss


def _rollout(seed=0, n=4, t_len=5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t_len, generator=g) * 2
    new = old + (torch.rand(n, t_len, generator=g) - 0.5) * 0.8  # ratios roughly 0.67..1.5
    ref = old + (torch.rand(n, t_len, generator=g) - 0.5) * 0.4
    mask = torch.ones(n, t_len, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, 1:] = False
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return new, old, ref, mask, adv


@pytest.mark.parametrize("agg", ["token", "seq"])
def test_grpo_beta0_equals_ppo_surrogate(agg):
    new, old, ref, mask, adv = _rollout()
    g = grpo_loss(new, old, ref, adv, mask, clip_eps=0.2, beta=0.0, agg=agg)
    p = ppo_policy_loss(new, old, adv.unsqueeze(1).expand_as(new), mask, clip_eps=0.2, agg=agg)
    close(g.loss, p.loss, tol=1e-7)
    close(g.clip_fraction, p.clip_fraction, tol=1e-7)
    assert float(g.clip_fraction) > 0  # the fixture exercises clipping
    g_noref = grpo_loss(new, old, None, adv, mask, beta=0.0, agg=agg)
    close(g_noref.loss, p.loss, tol=1e-7)


def test_grpo_loss_adds_beta_times_k3_by_hand():
    # One token, r = 1 (new = old), A = 0 -> surrogate 0; KL k3 of new vs ref with d = ref - new = -0.5.
    new = torch.tensor([[-1.0, -3.0]])
    ref = torch.tensor([[-1.5, -3.0]])
    out = grpo_loss(new, new.clone(), ref, torch.tensor([0.0]), torch.tensor([[1, 0]]), beta=0.1)
    k3 = math.exp(-0.5) + 0.5 - 1
    close(out.kl, k3)
    close(out.loss, 0.1 * k3)
    close(out.policy_loss, 0.0)
    with pytest.raises(ValueError):
        grpo_loss(new, new, None, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)


def test_grpo_gradients_finite_and_kl_pulls_toward_reference():
    new, old, ref, mask, adv = _rollout(1)
    new = new.clone().requires_grad_()
    out = grpo_loss(new, old, ref, adv, mask, beta=0.04)
    out.loss.backward()
    assert torch.isfinite(new.grad).all()
    assert (new.grad[~mask] == 0).all()
    # With zero advantage only the k3 term acts: d/dlogp k3 = 1 - exp(ref - logp), so descent moves
    # logp toward ref.
    x = torch.tensor([[-1.0]], requires_grad=True)
    grpo_loss(
        x, x.detach(), torch.tensor([[-2.0]]), torch.tensor([0.0]), torch.ones(1, 1), beta=1.0
    ).loss.backward()
    close(x.grad, [[1 - math.exp(-1.0)]])
    assert x.grad.item() > 0  # descent lowers logp toward ref = -2


# ---------------------------------------------------------------- entropy


def test_entropy_from_logits_matches_definition_and_chunking():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 3
    p = torch.softmax(logits, dim=-1)
    ref = -(p * torch.log_softmax(logits, dim=-1)).sum(-1)
    close(entropy_from_logits(logits), ref)
    close(entropy_from_logits(logits, chunk_size=4), ref)
    assert entropy_from_logits(logits).shape == (3, 5)
    close(entropy_from_logits(torch.zeros(2, 8)), [math.log(8)] * 2)
    close(entropy_from_logits(torch.tensor([[0.0, -1e4, -1e4]])), [0.0])  # one-hot-ish: no NaN
    bf16 = entropy_from_logits(logits.to(torch.bfloat16))
    assert bf16.dtype == torch.float32


def test_grpo_single_update_without_old_logprobs_matches_explicit_ones(tiny_model_dir):
    """One GRPO update per batch with no reference skips the no-grad old-log-prob pass
    (RLVRRun.learn): the loss then uses its own detached log-probs. Same loss, same gradients."""
    from transformers import AutoModelForCausalLM

    from open_instruct.config import from_dict
    from open_instruct.model.value import ActorCritic
    from open_instruct.rl.rlvr import RLVRConfig, build_experience, make_loss_fn

    torch.manual_seed(0)
    model = ActorCritic(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), None)
    cfg = from_dict(
        RLVRConfig,
        dict(
            model_name_or_path="m",
            dataset_mix="d",
            output_dir="o",
            algorithm="grpo",
            num_samples_per_prompt_rollout=2,
            num_unique_prompts_rollout=1,
            per_device_train_batch_size=2,
            beta=0.0,
            max_train_steps=1,
        ),
    )
    exp = build_experience([[5, 6, 7], [5, 6]], [[8, 9, 10, 2], [11, 2]], pad_id=0)
    exp.advantages = torch.tensor([[0.7], [-0.7]]) * exp.mask
    loss_fn = make_loss_fn(cfg)

    def grads(mb):
        model.zero_grad()
        out = loss_fn(model, mb)
        out.total.backward()
        return float(out.total.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    mb = exp.rows([0, 1])
    loss_skip, g_skip = grads(mb)
    with torch.no_grad():
        (old, _), _ = model(
            {k: mb[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}, False, True
        )
    loss_explicit, g_explicit = grads({**mb, "old_logp": old})
    assert abs(loss_skip - loss_explicit) < 1e-6
    assert max(float((a - b).abs().max()) for a, b in zip(g_skip, g_explicit)) < 1e-6
    assert abs(loss_skip) > 0 and any(float(g.abs().max()) > 0 for g in g_skip)
