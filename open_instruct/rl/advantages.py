"""Rewards and advantages for RLVR: reward shaping (verifiable score, non-EOS penalty, per-token KL),
GAE for PPO, group-relative advantages for GRPO, and whitening. Pure functions over tensors.

Shapes: ``N`` responses of up to ``T`` tokens, right-padded; ``response_mask`` ``[N, T]`` (bool or
0/1) marks the generated tokens. Inputs are rollout data (no gradient is expected or kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from open_instruct.rl.losses import kl_estimate, masked_mean, masked_var


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """``[N, T] -> [N]`` index of the last true position of each row (0 for an all-false row)."""
    mask = mask.bool()
    t = mask.shape[-1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    # Position where true, -1 where false: the row max is the last true position.
    return torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=-1).clamp(min=0)


@dataclass
class ShapedRewards:
    """``shape_rewards`` result.

    Attributes:
        rewards: ``[N, T]`` per-token rewards: ``-kl_beta * kl`` on every response token, plus the
            terminal reward on the last response token; 0 on padding.
        kl: ``[N, T]`` per-token KL estimate (0 on padding), before the beta factor.
        seq_kl: ``[N]`` per-response KL (sum over its tokens), for metrics.
        terminal_rewards: ``[N]`` the reward placed on the last token (score x verification_reward,
            or the non-EOS penalty).
        non_eos: ``[N]`` bool, responses that ended without EOS (whether or not penalised).
    """

    rewards: torch.Tensor
    kl: torch.Tensor
    seq_kl: torch.Tensor
    terminal_rewards: torch.Tensor
    non_eos: torch.Tensor


def shape_rewards(
    scores: torch.Tensor,
    finished_with_eos: torch.Tensor,
    response_mask: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    *,
    kl_beta: float,
    verification_reward: float = 10.0,
    non_eos_penalty: float | None = -10.0,
    kl_estimator: str = "k1",
) -> ShapedRewards:
    """Per-token PPO rewards, the Tülu 3 RLVR recipe.

    ``terminal_n = scores_n * verification_reward``, or ``non_eos_penalty`` when response n ended
    without EOS (hit the length limit) and the penalty is enabled;
    ``rewards[n, t] = -kl_beta * KL_t(n) + [t = last_n] * terminal_n`` on response tokens, 0 on padding,
    where ``KL_t`` is the ``kl_estimator`` (k1 = ``logp - ref_logp``) and ``last_n`` the last response
    token.

    Args:
        scores: ``[N]`` verifier scores (typically 0/1 or a fraction).
        finished_with_eos: ``[N]`` bool, the response ended with an EOS token.
        response_mask, logprobs, ref_logprobs: ``[N, T]``; log-probs of the sampled tokens under the
            rollout policy and the reference.
        kl_beta: KL coefficient (Tülu 3 8B: 0.05; OLMo 2 13B: 0.03).
        verification_reward: multiplier of the score (Tülu 3: 10).
        non_eos_penalty: reward that *replaces* the score of a response without EOS (Tülu 3: -10).
            ``None`` or ``0`` disables it: the response then keeps its score (Tülu 3.1 GRPO: 0).
        kl_estimator: ``k1`` (Tülu 3 PPO), ``k2`` or ``k3``.

    A response with no tokens gets no terminal reward (there is no token to put it on).
    """
    mask = response_mask.bool()
    non_eos = ~finished_with_eos.bool()
    terminal = scores.to(logprobs.dtype) * verification_reward
    if non_eos_penalty:  # None and 0 both mean "disabled"
        terminal = torch.where(non_eos, torch.full_like(terminal, float(non_eos_penalty)), terminal)

    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator)
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    rewards = -kl_beta * kl
    has_tokens = mask.any(dim=-1)
    last = last_token_index(mask)
    rewards = rewards.scatter_add(
        1, last.unsqueeze(1), torch.where(has_tokens, terminal, torch.zeros_like(terminal)).unsqueeze(1)
    )
    return ShapedRewards(
        rewards=rewards,
        kl=kl,
        seq_kl=kl.sum(dim=-1),
        terminal_rewards=terminal,
        non_eos=non_eos,
    )


class GAEOutput(NamedTuple):
    """``gae`` result (a tuple: ``advantages, returns = gae(...)`` works); both ``[N, T]``, 0 on
    masked positions."""

    advantages: torch.Tensor
    returns: torch.Tensor


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> GAEOutput:
    """Generalised advantage estimation (Schulman et al. 2016) over each response.

    Backwards over the response tokens of a row, with ``t'`` the next response token:
    ``delta_t = r_t + gamma * V_{t'} - V_t``, ``A_t = delta_t + gamma * lam * A_{t'}``, and
    ``V_{t'} = A_{t'} = 0`` after the last token (the episode ends there: the response is complete,
    or was cut at the length limit and penalised instead of bootstrapped). ``returns = A + V``.

    Masked positions are skipped rather than treated as steps: right padding then contributes
    nothing, and a masked gap inside a response (e.g. tool output) does not break the recursion.
    Masked positions of the outputs are 0. Tülu 3: gamma 1, lam 0.95.
    """
    mask = response_mask.bool()
    zeros = torch.zeros_like(rewards[:, 0])
    next_value, next_adv = zeros, zeros
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, adv, zeros)
        # Only a real token becomes the "next" step of the token before it.
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv, next_adv)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return GAEOutput(advantages, returns)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the masked elements of ``x`` to unit variance (and zero mean if ``shift_mean``):
    ``(x - mean) / sqrt(var + eps)`` (+ ``mean`` back when ``shift_mean`` is False), with the
    masked (Bessel-corrected) mean and variance over all masked elements of the batch. Masked-out
    positions are 0 in the output so padding never carries a value."""
    mask = mask.bool()
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))


def grpo_advantages(
    rewards: torch.Tensor,
    group_size: int,
    normalize_std: bool = True,
    eps: float = 1e-6,
    unbiased: bool = False,
) -> torch.Tensor:
    """Group-relative advantages (GRPO outcome supervision): ``[N] -> [N]``.

    ``A_i = (r_i - mean_g) / (std_g + eps)`` (or ``r_i - mean_g`` when ``normalize_std`` is False),
    with mean and std over the ``group_size`` consecutive samples of the same prompt.

    The std is the *population* std (ddof 0) by default: that is what open-instruct's GRPO (the
    Tülu 3.1 run) computes (``numpy.std``, with eps 1e-8 there). DeepSeekMath writes only
    ``std(r)``; TRL's GRPOTrainer uses the Bessel-corrected sample std (ddof 1), available with
    ``unbiased=True``. A group whose rewards are all equal gets advantage 0 (std 0, numerator 0,
    and the eps keeps it from being 0/0); it carries no learning signal.
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size)
    mean = grouped.mean(dim=-1, keepdim=True)
    advantages = grouped - mean
    if normalize_std:
        if unbiased and group_size > 1:
            std = grouped.std(dim=-1, keepdim=True, correction=1)
        else:
            std = grouped.std(dim=-1, keepdim=True, correction=0)
        advantages = advantages / (std + eps)
    # An all-equal group can still leave float rounding in r - mean (e.g. three 0.1s); with a std
    # of the same tiny size that would become a spurious O(0.01) advantage, so zero it exactly.
    constant = grouped.amax(dim=-1, keepdim=True) == grouped.amin(dim=-1, keepdim=True)
    advantages = torch.where(constant, torch.zeros_like(advantages), advantages)
    return advantages.reshape(rewards.shape)
