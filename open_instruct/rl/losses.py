"""RL losses as pure functions over tensors: PPO policy/value losses, the GRPO loss, KL estimators,
entropy from logits and a few masked statistics.

Shapes: ``N`` responses of up to ``T`` tokens, right-padded; ``mask`` ``[N, T]`` (bool or 0/1) marks
the response tokens that are trained. Per-token log-probs are ``log pi(a_t | s_t)`` of the sampled
token. ``new_logp`` carries the gradient; ``old_logp`` (the policy that generated / the start of this
PPO epoch), ``ref_logp`` (the frozen reference), advantages, returns and old values must not (they
are used as constants; callers pass detached tensors).

Aggregation (``agg``) of a per-token loss ``l[n, t]``:

- ``"token"``: ``sum_{n,t} mask * l / sum_{n,t} mask`` -- every token weighs the same whatever its
  response's length (the DAPO "token-level" loss; open-instruct's GRPO default). ``token_normalizer``
  replaces the denominator (e.g. the token count of the whole gradient-accumulation batch, so that
  micro-batches add up to the token mean of the whole batch).
- ``"seq"``: ``mean_n ( sum_t mask * l / sum_t mask )`` -- the per-response mean, then the mean over
  responses (the original GRPO / DeepSeekMath form); tokens of short responses weigh more. Responses
  with no tokens are left out of the mean.

KL estimators of ``KL(pi || pi_ref)`` from samples of pi (Schulman, "Approximating KL divergence",
2020), with ``d = ref_logp - logp`` = log(pi_ref / pi):

- ``k1 = -d = logp - ref_logp``: unbiased, high variance, can be negative per token (PPO in Tülu 3:
  subtracted from the per-token reward).
- ``k2 = d^2 / 2``: biased, low variance, >= 0.
- ``k3 = exp(d) - d - 1``: unbiased, low variance, >= 0 (GRPO / Tülu 3.1: added to the loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

AGGREGATIONS = ("token", "seq")
KL_ESTIMATORS = ("k1", "k2", "k3")


# ---------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask)``, computed with ``where`` so that a NaN/inf at a masked position cannot leak."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask) / sum(mask)`` over all elements or along ``dim``; 0 where the mask is empty
    (the count is clamped to 1 so an empty batch gives 0, not NaN)."""
    mask = mask.bool()
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked elements (Bessel-corrected when ``unbiased`` and there are >= 2)."""
    mask = mask.bool()
    count = mask.sum()
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token",
    token_normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token ``[N, T]`` quantity to a scalar; see the module docstring for ``agg``."""
    if agg == "token":
        if token_normalizer is None:
            return masked_mean(per_token, mask)
        return masked_sum(per_token, mask) / token_normalizer
    if agg == "seq":
        if token_normalizer is not None:
            raise ValueError("token_normalizer only applies to agg='token'")
        mask = mask.bool()
        per_seq = masked_mean(per_token, mask, dim=-1)
        # Empty responses would contribute a 0 and dilute the mean; leave them out.
        return masked_mean(per_seq, mask.any(dim=-1))
    raise ValueError(f"agg {agg!r} is not one of {', '.join(AGGREGATIONS)}")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[returns - values] / Var[returns]`` over the masked tokens (a value-head diagnostic:
    1 = perfect, 0 = no better than a constant, < 0 = worse). NaN when the returns are constant,
    where the quantity is undefined."""
    var_returns = masked_var(returns, mask)
    if var_returns == 0:
        return torch.tensor(float("nan"), dtype=returns.dtype, device=returns.device)
    return 1.0 - masked_var(returns - values, mask) / var_returns


# ---------------------------------------------------------------- KL estimators


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = ``logp - ref_logp`` (per token; unbiased for KL(pi || ref), may be negative)."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ``(logp - ref_logp)^2 / 2`` (biased, >= 0)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = ``exp(ref - logp) - (ref - logp) - 1`` (unbiased, >= 0, 0 iff equal).

    Written as ``expm1(d) - d``: near d = 0 the two terms of ``exp(d) - 1`` cancel and ``expm1``
    keeps the precision that ``exp(d) - 1`` would lose in float32."""
    d = ref_logp - logp
    return torch.expm1(d) - d


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Dispatch to ``kl_k1`` / ``kl_k2`` / ``kl_k3`` by name."""
    if estimator == "k1":
        return kl_k1(logp, ref_logp)
    if estimator == "k2":
        return kl_k2(logp, ref_logp)
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"kl estimator {estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")


# ---------------------------------------------------------------- entropy


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last (vocabulary) dim: ``[..., V] -> [...]``.

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``, which needs no ``log softmax`` tensor. Rows are
    processed ``chunk_size`` at a time so the float32 temporaries are ``chunk_size x V`` rather than
    the whole ``[N*T, V]`` (with a 128k vocabulary a full float32 copy of a batch's logits is GBs).
    The result is float32 (bf16 logits are upcast per chunk).
    """
    lead_shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start : start + chunk_size].float()
        lse = torch.logsumexp(z, dim=-1)
        p = torch.exp(z - lse.unsqueeze(-1))
        out.append(lse - (p * z).sum(dim=-1))
    if not out:
        return torch.zeros(lead_shape, dtype=torch.float32, device=logits.device)
    return torch.cat(out).reshape(lead_shape)


# ---------------------------------------------------------------- PPO


class PolicyLossOutput(NamedTuple):
    """``ppo_policy_loss`` result (a tuple: ``loss, clip_fraction, approx_kl = ...`` works).

    loss: scalar surrogate loss (with gradient). clip_fraction: share of masked tokens where the
    clipped term is the active one. approx_kl: masked mean of ``(r - 1) - log r``, a k3 estimate of
    KL(old || new) (detached; for early stopping / logging)."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def _per_token_surrogate(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss, the "clipped" indicator and log r."""
    if advantages.dim() == new_logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)  # one advantage per sequence, broadcast over tokens
    log_ratio = new_logp - old_logp
    ratio = torch.exp(log_ratio)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    # The max of the two losses = the min of the two objectives: the pessimistic bound, which gives
    # no incentive to move the ratio beyond the clip range in the direction the advantage favours.
    per_token = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    return per_token, is_clipped, log_ratio


def ppo_policy_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    agg: str = "token",
    *,
    clip_eps_high: float | None = None,
    token_normalizer: float | torch.Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017).

    ``r = exp(new_logp - old_logp)``;
    ``l_t = max(-A_t * r_t, -A_t * clip(r_t, 1 - eps, 1 + eps_high))``, aggregated by ``agg``.

    Args:
        new_logp, old_logp, mask: ``[N, T]``.
        advantages: ``[N, T]`` (GAE) or ``[N]`` (one per sequence, e.g. GRPO), detached.
        clip_eps: eps (Tülu 3: 0.2). ``clip_eps_high``: the upper eps if different (DAPO clip-higher);
            defaults to ``clip_eps``.
        agg / token_normalizer: see the module docstring.
    """
    per_token, is_clipped, log_ratio = _per_token_surrogate(
        new_logp, old_logp, advantages, clip_eps, clip_eps_high
    )
    loss = aggregate(per_token, mask, agg, token_normalizer)
    with torch.no_grad():
        clip_fraction = masked_mean(is_clipped.float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return PolicyLossOutput(loss, clip_fraction, approx_kl)


class ValueLossOutput(NamedTuple):
    """``value_loss`` result: scalar loss (with gradient) and the share of masked tokens where the
    clipped squared error was the larger (active) one."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    agg: str = "token",
    *,
    token_normalizer: float | torch.Tensor | None = None,
) -> ValueLossOutput:
    """Clipped value loss: ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``,
    aggregated by ``agg`` (masked token mean by default).

    The clipped branch keeps a value update within ``c`` of the rollout-time value, as the policy
    ratio clip does for the policy. ``clip=None`` gives the plain ``0.5 * (V - R)^2``. The value
    coefficient (Tülu 3: 0.1) is applied by the caller when adding this to the policy loss.
    """
    unclipped = (new_values - returns) ** 2
    if clip is None:
        per_token = 0.5 * unclipped
        is_clipped = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clipped = old_values + torch.clamp(new_values - old_values, -clip, clip)
        clipped = (v_clipped - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        is_clipped = clipped > unclipped
    loss = aggregate(per_token, mask, agg, token_normalizer)
    with torch.no_grad():
        clip_fraction = masked_mean(is_clipped.float(), mask)
    return ValueLossOutput(loss, clip_fraction)


# ---------------------------------------------------------------- GRPO


@dataclass
class GRPOLossOutput:
    """``grpo_loss`` result (scalars).

    Attributes:
        loss: ``policy_loss + beta * kl`` with gradient (what to backpropagate).
        policy_loss: the clipped-surrogate part, detached.
        kl: the aggregated per-token KL(new || ref) estimate, detached (before the beta factor).
        clip_fraction: share of masked tokens where the ratio clip is active.
        approx_kl: masked mean k3 estimate of KL(old || new), detached.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.01,
    kl_estimator: str = "k3",
    agg: str = "token",
    *,
    clip_eps_high: float | None = None,
    token_normalizer: float | torch.Tensor | None = None,
) -> GRPOLossOutput:
    """GRPO loss (DeepSeekMath, Shao et al. 2024), as in Tülu 3.1:

    ``l_t = max(-A r_t, -A clip(r_t, 1 - eps, 1 + eps_high)) + beta * KL_t(new || ref)``,
    ``r_t = exp(new_logp_t - old_logp_t)``, ``KL_t`` the ``kl_estimator`` (k3 in Tülu 3.1, beta 0.01)
    evaluated at ``new_logp`` so it carries gradient, aggregated by ``agg`` -- ``"token"`` (sum over
    all tokens / total tokens, DAPO-style, the Tülu 3.1 / open-instruct choice) or ``"seq"`` (the
    paper's per-response mean, then mean over responses).

    With ``beta = 0`` (``ref_logp`` may then be None) this is exactly ``ppo_policy_loss`` with the
    sequence advantages broadcast over tokens.

    Args:
        new_logp, old_logp, ref_logp, mask: ``[N, T]``.
        advantages: ``[N]`` (e.g. ``grpo_advantages``) or ``[N, T]``.
    """
    per_token_pg, is_clipped, log_ratio = _per_token_surrogate(
        new_logp, old_logp, advantages, clip_eps, clip_eps_high
    )
    policy_loss = aggregate(per_token_pg, mask, agg, token_normalizer)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("grpo_loss with beta != 0 needs ref_logp")
        per_token_kl = kl_estimate(new_logp, ref_logp, kl_estimator)
        kl = aggregate(per_token_kl, mask, agg, token_normalizer)
        loss = policy_loss + beta * kl
    else:
        kl = (
            aggregate(kl_estimate(new_logp, ref_logp, kl_estimator), mask, agg, token_normalizer)
            if ref_logp is not None
            else torch.zeros((), dtype=new_logp.dtype, device=new_logp.device)
        )
        loss = policy_loss
    with torch.no_grad():
        clip_fraction = masked_mean(is_clipped.float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return GRPOLossOutput(
        loss=loss,
        policy_loss=policy_loss.detach(),
        kl=kl.detach(),
        clip_fraction=clip_fraction,
        approx_kl=approx_kl,
    )
