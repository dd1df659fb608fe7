"""DPO batches: chosen and rejected of each pair through the model in ONE forward, in one of two
layouts, and the per-sequence log-probs read back from it (`response_logps`).

- shared-prompt layout (padded mode, `share_prompt`, sdpa/eager attention): one row per pair
  [prompt, chosen, rejected] with a custom 4D mask, the prompt computed once (`shared_prompt_collate`);
- otherwise the concatenated batch: sequences 0..n-1 chosen, n..2n-1 rejected, padded or packed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..data.examples import take
from .config import DPOConfig
from .dpo_loss import sequence_logps
from .engine import BatchPlan
from .ref_cache import PairLogps

log = logging.getLogger(__name__)


def response_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of every sequence's labelled tokens, `([2n], [2n])`,
    chosen 0..n-1 then rejected n..2n-1, for either batch layout (see `make_batch`).

    The logits are computed only at positions that predict a labelled token (`logits_to_keep`):
    the prompt needs no LM head, which for a 128k vocabulary is most of the logits memory."""
    if "lp_src" in batch:
        return _shared_prompt_logps(model, batch)
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)  # logits at p predict labels[p + 1]
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    logits = _logits(model, kwargs, keep)
    targets = targets[:, keep]
    seq_index = batch["seq_index"][:, 1:][:, keep]
    mask = targets != -100
    # log_softmax at the target only: gather the logit, subtract logsumexp (fp32, as Policy does)
    picked = torch.gather(logits, -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
    token_lp = picked - torch.logsumexp(logits.float(), dim=-1)
    return sequence_logps(token_lp, seq_index, batch["num_sequences"], mask=mask)


def _logits(model: torch.nn.Module, kwargs: dict, keep: torch.Tensor) -> torch.Tensor:
    try:
        return model(**kwargs, logits_to_keep=keep).logits
    except TypeError:  # a model class without logits_to_keep
        return model(**kwargs).logits[:, keep]


def _shared_prompt_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared-prompt layout: every labelled token is given as (row, source position, target, sequence);
    its log-prob is log_softmax(logits[row, source])[target]. The first rejected token's source is the
    prompt's last position, which also predicts the first chosen token."""
    row, src, tgt, seq = batch["lp_row"], batch["lp_src"], batch["lp_tgt"], batch["lp_seq"]
    keep, where = torch.unique(src, return_inverse=True)
    kwargs = {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "attention_mask": batch["attention_mask_4d"],
        "use_cache": False,
    }
    logits = _logits(model, kwargs, keep)  # [B, K, V]
    picked = logits[row, where, tgt].float()
    token_lp = picked - torch.logsumexp(logits.float(), dim=-1)[row, where]
    n_seq = batch["num_sequences"]
    sums = torch.zeros(n_seq, dtype=torch.float32, device=token_lp.device).scatter_add(0, seq, token_lp)
    counts = torch.zeros(n_seq, dtype=torch.long, device=token_lp.device).scatter_add(
        0, seq, torch.ones_like(seq)
    )
    return sums, counts


def shared_prompt_collate(rows: list[dict], pad_token_id: int, eager: bool = False) -> dict:
    """One row per pair: [prompt, chosen response, rejected response], right-padded. Positions of the
    rejected response restart where the prompt ends, and its tokens attend to the prompt and to
    themselves only (a custom 4D mask), so every response sees exactly the context it would alone,
    while the prompt (and its activations) are computed once instead of twice.

    The 4D mask is stored as `attention_mask_4d` (bool, True = attend; additive float for eager
    attention): the engine reads a plain `attention_mask` as a token count."""
    n = len(rows)
    spans = []
    for r in rows:
        p = int(r["prompt_length"])
        spans.append(
            (
                p,
                list(r["chosen_input_ids"]),
                list(r["rejected_input_ids"]),
                list(r["chosen_labels"]),
                list(r["rejected_labels"]),
            )
        )
    width = max(len(c) + len(rj) - p for p, c, rj, _, _ in spans)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, 1, width, width), dtype=torch.bool)
    tril = torch.ones(width, width, dtype=torch.bool).tril()
    lp_row, lp_src, lp_tgt, lp_seq = [], [], [], []
    for i, (p, c_ids, r_ids, c_lab, r_lab) in enumerate(spans):
        pc, rlen = len(c_ids), len(r_ids) - p  # prompt + chosen, rejected response
        end = pc + rlen
        input_ids[i, :pc] = torch.tensor(c_ids)
        input_ids[i, pc:end] = torch.tensor(r_ids[p:])
        position_ids[i, :pc] = torch.arange(pc)
        position_ids[i, pc:end] = torch.arange(p, p + rlen)
        m = mask[i, 0]
        m[:pc, :pc] = tril[:pc, :pc]
        m[pc:end, :p] = True
        m[pc:end, pc:end] = tril[:rlen, :rlen]
        pad = torch.arange(end, width)
        m[pad, pad] = True  # padding attends to itself: no all-masked row (NaN) anywhere
        for t in range(p, pc):  # chosen response token at t, predicted from t - 1
            if c_lab[t] != -100:
                lp_row.append(i), lp_src.append(t - 1), lp_tgt.append(c_ids[t]), lp_seq.append(i)
        for j in range(
            rlen
        ):  # rejected response token j sits at pc + j; its context ends at p - 1 or pc + j - 1
            if r_lab[p + j] != -100:
                lp_row.append(i), lp_src.append(pc + j - 1 if j else p - 1), lp_tgt.append(r_ids[p + j])
                lp_seq.append(n + i)
    if eager:
        mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(
            ~mask, torch.finfo(torch.float32).min
        )
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask_4d": mask,
        "lp_row": as_long(lp_row),
        "lp_src": as_long(lp_src),
        "lp_tgt": as_long(lp_tgt),
        "lp_seq": as_long(lp_seq),
        "num_sequences": 2 * n,
    }


def make_batch(
    cfg: DPOConfig,
    pad_token_id: int,
    dataset,
    indices,
    device,
    ref: PairLogps | None = None,
    shared: bool | None = None,
) -> dict:
    """Pairs `indices` as ONE batch for ONE forward, chosen and rejected together:
    - shared-prompt layout (padded mode, `share_prompt`, sdpa/eager attention): one row per pair, see
      `shared_prompt_collate`;
    - otherwise the concatenated batch: sequences 0..n-1 chosen, n..2n-1 rejected, padded or packed
      into rows of at most max_seq_length tokens (cfg.packing).
    `units` = pairs, so the engine's `sum` reduction averages the loss over the effective batch's pairs."""
    from ..data.collate import preference_collate

    rows = take(dataset, indices)
    if shared is None:
        shared = use_shared_prompt(cfg)
    if shared:
        batch = shared_prompt_collate(rows, pad_token_id, eager=cfg.attn_implementation == "eager")
    else:
        batch = preference_collate(
            rows,
            pad_token_id,
            packing=cfg.packing,
            max_tokens_per_row=cfg.max_seq_length if cfg.packing else None,
        )
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    batch["num_pairs"] = batch["units"] = len(rows)
    if ref is not None:
        sel = ref.take(indices)
        batch["ref_chosen"], batch["ref_rejected"] = sel.chosen.to(device), sel.rejected.to(device)
    return batch


def use_shared_prompt(cfg: DPOConfig) -> bool:
    """The shared-prompt layout needs a custom 4D mask: sdpa or eager attention, no packing."""
    return cfg.share_prompt and not cfg.packing and cfg.attn_implementation in ("sdpa", "eager")


def check_shared_prompt(cfg: DPOConfig, model: torch.nn.Module, dataset, pad_token_id: int, device) -> bool:
    """Whether this model computes the same response log-probs in the shared-prompt layout as in
    the concatenated one, on a few real pairs (a model that ignores custom 4D masks, or uses a
    sliding window, would not). On a mismatch, warn and use the concatenated batch."""
    if not use_shared_prompt(cfg):
        return False
    idx = list(range(min(4, len(dataset))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a, n = response_logps(model, make_batch(cfg, pad_token_id, dataset, idx, device, shared=True))
            b, m = response_logps(model, make_batch(cfg, pad_token_id, dataset, idx, device, shared=False))
    except Exception as e:  # noqa: BLE001 - any failure of the custom mask means: do not use it
        log.warning(
            "shared-prompt batches fail on this model (%s: %s); using concatenated batches",
            type(e).__name__,
            e,
        )
        return False
    finally:
        model.train(was_training)
    per_token = ((a - b).abs() / m.clamp(min=1)).max().item()
    # fp32: numerically equal; half precision: different summation orders (tolerance per token)
    tol = 1e-4 if a.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 else 5e-2
    if not torch.equal(n, m) or not per_token <= tol:
        log.warning(
            "shared-prompt batches do not reproduce this model's log-probs (max %.3g nats/token); "
            "using concatenated batches",
            per_token,
        )
        return False
    return True


@dataclass
class LengthGroupedPlan(BatchPlan):
    """The stage plan (same pairs per optimizer step, a pure function of seed and step), except that
    each process's pairs of a step are sorted by length before they are cut into micro-batches, so
    a micro-batch holds pairs of similar length and carries little padding. With the engine's `sum`
    reduction the step's gradient does not depend on how its pairs are grouped."""

    lengths: np.ndarray | None = None

    def shard(self, step: int, process_index: int, world_size: int, accumulation: int) -> list[np.ndarray]:
        mine = np.concatenate(super().shard(step, process_index, world_size, accumulation))
        mine = mine[np.argsort(-self.lengths[mine], kind="stable")]
        return np.array_split(mine, accumulation)
