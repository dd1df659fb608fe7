"""Preference-optimisation losses (DPO and friends) as pure functions over tensors.

Everything here works on *sequence-level* log-probabilities: the sum over a response's labelled
tokens of ``log pi(y_t | x, y_<t)``, plus each response's token count. ``sequence_logps`` turns the
per-token log-probs of a collated batch (``Policy.logprobs(batch)`` -> ``[B, T]``, 0 where
``labels == -100``) into those sums with a ``scatter_add`` over ``seq_index``, so padded and packed
batches give identical results (see docs/architecture.md, "Batches").

Notation used in the docstrings (per preference pair, ``w`` = chosen, ``l`` = rejected):

- ``S_w = log pi(y_w|x)``, ``S_l`` (policy, summed over tokens); ``R_w``, ``R_l`` the reference.
- ``n_w = |y_w|``, ``n_l = |y_l|`` the response token counts.
- ``h`` the log-ratio difference the loss type uses (defined per loss type below).

Loss types (``loss_type``):

``dpo``
    ``h = (S_w - R_w) - (S_l - R_l)``;
    ``loss = -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)``
    (DPO, Rafailov et al. 2023, with conservative label smoothing eps = ``label_smoothing``, "cDPO").
    eps = 0 is plain DPO and equals TRL 1.16's ``loss_type="sigmoid"``.
``dpo_norm``
    Length-normalised DPO, the Tülu 3 / OLMo 2 default (beta 5): every log-prob is replaced by the
    *mean* per-token log-prob of its response, policy and reference both divided by that response's
    token count: ``h = (S_w - R_w) / n_w - (S_l - R_l) / n_l``; same sigmoid loss (with the same
    optional label smoothing). Equals TRL 1.16's ``loss_type="sigmoid_norm"``.
``simpo``
    SimPO (Meng et al. 2024, arXiv 2405.14734, Eq. 6), reference-free:
    ``loss = -logsigmoid(beta * S_w / n_w - beta * S_l / n_l - gamma)``, with label smoothing applied
    as for ``dpo``. ``gamma`` here is the paper's *absolute* target reward margin (in reward units,
    i.e. already multiplied by beta). The SimPO repository's config instead exposes
    ``gamma_beta_ratio`` = gamma / beta (it computes ``beta * (S_w/n_w - S_l/n_l - gamma_beta_ratio)``);
    to use a ratio r from there pass ``gamma = r * beta``. (TRL's CPO ``simpo_gamma`` is also absolute.)
``ipo``
    IPO (Azar et al. 2023, Eq. 17): ``loss = (h - 1 / (2 * beta))^2`` with ``beta`` playing the role of
    the paper's tau. ``h`` uses per-token *mean* log-ratios, ``h = (S_w - R_w)/n_w - (S_l - R_l)/n_l``,
    as TRL does (its code comment: summed log-ratios make the squared loss scale with response length;
    the IPO authors confirmed the normalised form is what their results used). Label smoothing does not
    apply and is rejected.

Rewards (reported, never differentiated): ``beta`` times the quantity each loss compares, i.e.
``dpo``: ``beta * (S - R)``; ``dpo_norm`` and ``ipo``: ``beta * (S - R) / n``; ``simpo``: ``beta * S / n``.
``margins = chosen_rewards - rejected_rewards`` (for simpo without the gamma offset).
``accuracies = chosen_rewards > rejected_rewards`` (strict: a tie counts as *not* correct, so a policy
identical to its reference starts at accuracy 0, not 0.5 or 1; TRL uses the same strict comparison).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LOSS_TYPES

# Loss types whose log-probs are divided by the response length.
_LENGTH_NORMALISED = ("dpo_norm", "simpo", "ipo")


def sequence_logps(
    token_logps: torch.Tensor,
    seq_index: torch.Tensor,
    num_sequences: int,
    *,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of per-token log-probs and per-sequence token counts.

    ``sum_logps[n] = sum_{b,t: seq_index[b,t] = n, counted[b,t]} token_logps[b,t]`` and
    ``num_tokens[n] = #{b,t: seq_index[b,t] = n, counted[b,t]}``, where a position is *counted* when it
    belongs to a sequence (``seq_index >= 0``) and is trained (``labels != -100``, or ``mask`` true).

    Args:
        token_logps: ``[B, T]`` float, the log-prob of ``labels[b, t]`` (0 where untrained).
        seq_index: ``[B, T]`` long, example index 0..N-1, -1 on padding.
        num_sequences: N.
        labels: ``[B, T]`` long, HF convention; positions with -100 are not tokens of the response.
        mask: ``[B, T]`` bool/int, 1 where the token counts. Exactly one of ``labels``/``mask``.

    Returns:
        ``(sum_logps [N], num_tokens [N])``; ``sum_logps`` is float32 (or float64 for float64 input)
        and keeps the gradient, ``num_tokens`` is long.
    """
    # The mask is mandatory: the -100 positions already hold 0 log-prob, so the sum would be right
    # without it, but the token count (the length normaliser of dpo_norm/simpo/ipo) would include the
    # prompt and be silently wrong.
    if (labels is None) == (mask is None):
        raise ValueError("sequence_logps needs exactly one of labels= or mask= to know which tokens count")
    if token_logps.shape != seq_index.shape:
        raise ValueError(
            f"token_logps {tuple(token_logps.shape)} and seq_index {tuple(seq_index.shape)} differ"
        )
    trained = (labels != -100) if labels is not None else mask.bool()
    counted = trained & (seq_index >= 0)
    # Padding (-1) is sent to bucket 0 with value 0, so it adds nothing; masked_fill (not multiply)
    # keeps a stray -inf at an untrained position from turning into NaN.
    index = torch.where(counted, seq_index, torch.zeros_like(seq_index)).reshape(-1)
    # Accumulate in at least float32: a bf16 sum over a 2k-token response loses whole nats.
    dtype = torch.promote_types(token_logps.dtype, torch.float32)
    values = token_logps.to(dtype).masked_fill(~counted, 0.0).reshape(-1)
    sum_logps = torch.zeros(num_sequences, dtype=dtype, device=token_logps.device)
    sum_logps = sum_logps.scatter_add(0, index, values)
    num_tokens = torch.zeros(num_sequences, dtype=torch.long, device=token_logps.device)
    num_tokens = num_tokens.scatter_add(0, index, counted.reshape(-1).long())
    return sum_logps, num_tokens


@dataclass
class PreferenceLossOutput:
    """Result of ``preference_loss``; every per-pair field is ``[N]``.

    Attributes:
        loss: scalar, mean of ``losses`` over pairs (the value to backpropagate).
        losses: per-pair loss.
        chosen_rewards / rejected_rewards: implicit rewards (see module docstring), detached.
        margins: ``chosen_rewards - rejected_rewards``, detached.
        accuracies: float 1.0 where ``chosen_rewards > rejected_rewards`` strictly, else 0.0.
        chosen_logps / rejected_logps: the policy's summed log-probs as given, detached (metrics).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor


def _smoothed_sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``-(1 - eps) logsigmoid(z) - eps logsigmoid(-z)``: the cross-entropy against a label that
    says "chosen is better" with probability 1 - eps (conservative DPO)."""
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    chosen_len: torch.Tensor | None = None,
    rejected_len: torch.Tensor | None = None,
    loss_type: str = "dpo_norm",
    beta: float = 5.0,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
) -> PreferenceLossOutput:
    """Pairwise preference loss from sequence-level (summed) log-probs; see the module docstring.

    Args:
        policy_chosen, policy_rejected: ``[N]`` summed policy log-probs (with gradient).
        ref_chosen, ref_rejected: ``[N]`` summed reference log-probs; ``None`` allowed only for
            ``simpo`` (ignored there if given).
        chosen_len, rejected_len: ``[N]`` response token counts (e.g. ``num_tokens`` from
            ``sequence_logps``); required by the length-normalised types, unused by ``dpo``. A count
            of 0 is treated as 1 (the sum is then 0, so the mean is 0 rather than NaN).
        loss_type: ``dpo`` | ``dpo_norm`` | ``simpo`` | ``ipo``.
        beta: inverse temperature (Tülu 3 dpo_norm: 5; IPO: the paper's tau).
        label_smoothing: conservative-DPO eps in [0, 0.5) for ``dpo``/``dpo_norm``/``simpo``.
        gamma: SimPO target reward margin (absolute, the paper's gamma; = gamma_beta_ratio * beta).

    Returns:
        PreferenceLossOutput.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing does not apply to the ipo loss")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type != "simpo" and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"loss_type {loss_type!r} needs reference log-probs (only simpo is reference-free)")
    if loss_type in _LENGTH_NORMALISED and (chosen_len is None or rejected_len is None):
        raise ValueError(f"loss_type {loss_type!r} needs chosen_len and rejected_len")

    if loss_type in _LENGTH_NORMALISED:
        # clamp(min=1): an empty response has sum 0, so its mean is 0 instead of 0/0.
        n_w = chosen_len.to(policy_chosen.dtype).clamp(min=1.0)
        n_l = rejected_len.to(policy_rejected.dtype).clamp(min=1.0)
    else:
        n_w = n_l = 1.0

    if loss_type == "simpo":
        chosen_score = policy_chosen / n_w
        rejected_score = policy_rejected / n_l
    else:
        chosen_score = (policy_chosen - ref_chosen) / n_w
        rejected_score = (policy_rejected - ref_rejected) / n_l
    h = chosen_score - rejected_score

    if loss_type in ("dpo", "dpo_norm"):
        losses = _smoothed_sigmoid_loss(beta * h, label_smoothing)
    elif loss_type == "simpo":
        losses = _smoothed_sigmoid_loss(beta * h - gamma, label_smoothing)
    else:  # ipo: regress h onto 1/(2 tau) instead of pushing it to infinity
        losses = (h - 1.0 / (2.0 * beta)) ** 2

    chosen_rewards = (beta * chosen_score).detach()
    rejected_rewards = (beta * rejected_score).detach()
    return PreferenceLossOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracies=(chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
        chosen_logps=policy_chosen.detach(),
        rejected_logps=policy_rejected.detach(),
    )


def metrics(output: PreferenceLossOutput) -> dict[str, float]:
    """Batch means of a ``PreferenceLossOutput`` as plain floats, under the names the trainers log."""
    return {
        "loss": float(output.loss.detach()),
        "rewards/chosen": float(output.chosen_rewards.float().mean()),
        "rewards/rejected": float(output.rejected_rewards.float().mean()),
        "rewards/margin": float(output.margins.float().mean()),
        "rewards/accuracy": float(output.accuracies.float().mean()),
        "logps/chosen": float(output.chosen_logps.float().mean()),
        "logps/rejected": float(output.rejected_logps.float().mean()),
    }
