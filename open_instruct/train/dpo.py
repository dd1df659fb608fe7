"""DPO stage: dpo / dpo_norm (Tülu 3) / simpo / ipo on preference pairs, optional NLL on the chosen
response, reference log-probs computed once and cached.

    open-instruct dpo --config dpo.yaml [--set key=value ...]
    open-instruct dpo --model PATH_OR_ID --data prefs.jsonl --output DIR [--set key=value ...]
    accelerate launch --num_processes 2 -m open_instruct.cli dpo --config dpo.yaml

What a run does, top to bottom (`run_dpo`):
1. load + validate the preference data (bad pairs are counted, dropped and reported), tokenise (cached);
2. load the policy and hand it to the engine (DDP / DeepSpeed / one process);
3. reference log-probs: one no-grad pass of the starting model (or `ref_model_name_or_path`) over the
   data, sharded over processes, cached on disk (ref_cache.py); a rerun with the same key runs no
   reference forward. No reference model stays in memory for training (`reference: live` keeps a
   frozen copy instead, for those who want it; `simpo` has no reference at all);
4. the step loop of the shared engine (accumulation, clipping, checkpoints, exact resume, tracking):
   chosen and rejected go through the model in ONE forward (a concatenated batch, padded or packed);
5. held-out preference accuracy before/after (`eval_dataset_mix`) -> `eval.json`; publish the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import apply_overrides, from_dict, load_yaml
from ..data.policy_pairs import PairMaker, PolicyPairsConfig
from ..errors import ConfigError
from . import ref_cache, stage
from .dpo_loss import LOSS_TYPES, preference_loss, sequence_logps
from .engine import BatchPlan, Engine, LossOut, TrainConfig
from .ref_cache import PairLogps

log = logging.getLogger(__name__)

# Loss types that compare per-token *mean* log-probs (used for the held-out accuracy score too).
LENGTH_NORMALISED = ("dpo_norm", "simpo", "ipo")


@dataclass
class DPOConfig(TrainConfig):
    """DPO stage config. Defaults are the Tülu 3 8B DPO run (REFERENCE.md section 1: the
    Llama-3.1-Tulu-3-8B-DPO model card and open-instruct's docs/tulu3.md command); the source of
    each value is in its comment. Fields not listed here are TrainConfig's (engine.py)."""

    # --- loss
    loss_type: Literal["dpo", "dpo_norm", "simpo", "ipo"] = (
        "dpo_norm"  # Tülu 3 8B: length-normalised DPO (`--dpo_loss_type dpo_norm`)
    )
    beta: float = 5.0  # Tülu 3 8B model card: "KL penalty coefficient 5" (`--dpo_beta 5`)
    label_smoothing: float = 0.0  # conservative DPO eps (dpo, dpo_norm, simpo); Tülu 3 used none
    simpo_gamma: float = (
        0.5  # SimPO target reward margin, absolute (= gamma_beta_ratio x beta); TRL CPOConfig's default
    )
    nll_coef: float = 0.0  # RPO-style NLL on the chosen response (mean per-token NLL x coef); off in Tülu 3
    # --- batch layout
    share_prompt: bool = (
        True  # padded mode: one row per pair [prompt, chosen, rejected], the prompt computed once
    )
    # --- reference
    reference: Literal["cached", "live"] = (
        "cached"  # cached: one pass before training (open-instruct dpo_tune_cache)
    )
    ref_model_name_or_path: str | None = None  # null: the starting model is the reference (Tülu 3)
    reference_batch_size: int | None = (
        None  # pairs per forward in the reference/eval passes; null: per_device_train_batch_size
    )
    # --- held-out evaluation
    eval_dataset_mix: str | None = None  # held-out preference pairs -> eval.json (accuracy before/after)
    # --- on-policy pairs: the starting model's own right vs wrong answers to verifiable prompts
    # (data/policy_pairs.py); replaces dataset_mix / eval_dataset_mix when its prompts are set
    policy_pairs: PolicyPairsConfig = field(default_factory=PolicyPairsConfig)
    # --- optimisation (overrides of TrainConfig defaults)
    learning_rate: float = 5e-7  # Tülu 3 8B model card (70B/405B: 2e-7)
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"  # model card
    warmup_ratio: float = 0.1  # model card
    weight_decay: float = 0.0  # docs/tulu3.md command (`--weight_decay 0.0`)
    num_train_epochs: float = 1.0  # model card
    max_seq_length: int = 2048  # model card
    total_batch_size: int | None = 32  # model card, 8B (70B: 128, 405B: 256; the public 8B script used 128)
    # seed: TrainConfig's 42 -- no seed is published for the 8B DPO run

    @property
    def generates_data(self) -> bool:
        return self.policy_pairs.enabled

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.policy_pairs.enabled and self.dataset_mix:
            raise ConfigError(
                f"{where}.dataset_mix: policy_pairs.prompts makes the training pairs; remove one of the two"
            )
        if self.policy_pairs.eval_prompts and self.eval_dataset_mix:
            raise ConfigError(
                f"{where}.eval_dataset_mix: policy_pairs.eval_prompts makes the held-out pairs; remove one "
                f"of the two"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"{where}.loss_type: {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise ConfigError(f"{where}.beta: must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"{where}.label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ConfigError(f"{where}.label_smoothing: does not apply to loss_type ipo (set it to 0)")
        if self.nll_coef < 0:
            raise ConfigError(f"{where}.nll_coef: must be >= 0, got {self.nll_coef}")
        if self.loss_type == "simpo" and self.ref_model_name_or_path:
            raise ConfigError(f"{where}.ref_model_name_or_path: simpo uses no reference model; remove it")
        if self.reference_batch_size is not None and self.reference_batch_size < 1:
            raise ConfigError(f"{where}.reference_batch_size: must be >= 1, got {self.reference_batch_size}")
        if self.eval_dataset_mix == "":
            self.eval_dataset_mix = None


# ----------------------------------------------------------------------------- forward


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

    rows = stage.rows(dataset, indices)
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


def make_loss_fn(cfg: DPOConfig, ref_model: torch.nn.Module | None = None) -> Callable[..., LossOut]:
    """The engine's loss: sum over the micro-batch's pairs of (preference loss + nll_coef * NLL)."""

    def loss_fn(model: torch.nn.Module, batch: dict) -> LossOut:
        n = batch["num_pairs"]
        sums, counts = response_logps(model, batch)
        ref_c = ref_r = None
        if ref_model is not None:  # live reference: same batch, frozen copy, no graph
            with torch.no_grad():
                ref_sums, _ = response_logps(ref_model, batch)
            ref_c, ref_r = ref_sums[:n], ref_sums[n:]
        elif cfg.loss_type != "simpo":
            ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
        out = preference_loss(
            sums[:n],
            sums[n:],
            ref_c,
            ref_r,
            counts[:n],
            counts[n:],
            loss_type=cfg.loss_type,
            beta=cfg.beta,
            label_smoothing=cfg.label_smoothing,
            gamma=cfg.simpo_gamma,
        )
        total = out.losses.sum()
        # Unit-weighted sums: the engine divides by the pairs of the whole effective batch.
        metrics = {
            "dpo_loss": out.losses.detach().sum(),
            "rewards/chosen": out.chosen_rewards.sum(),
            "rewards/rejected": out.rejected_rewards.sum(),
            "rewards/margin": out.margins.sum(),
            "rewards/accuracy": out.accuracies.sum(),
            "logps/chosen": out.chosen_logps.sum(),
            "logps/rejected": out.rejected_logps.sum(),
        }
        if cfg.nll_coef:
            # RPO (Pang et al. 2024): + alpha * NLL of the chosen response, per token (length-normalised)
            nll = -sums[:n] / counts[:n].clamp(min=1).to(sums.dtype)
            total = total + cfg.nll_coef * nll.sum()
            metrics["nll"] = nll.detach().sum()
        return LossOut(total=total, units=float(n), metrics={k: float(v) for k, v in metrics.items()})

    return loss_fn


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


# ----------------------------------------------------------------------------- reference / eval passes


def pass_batch_pairs(cfg: DPOConfig) -> int:
    return cfg.reference_batch_size or cfg.per_device_train_batch_size


def score_pairs(
    cfg: DPOConfig,
    model: torch.nn.Module,
    dataset,
    engine: Engine,
    pad_token_id: int,
    desc: str,
    shared: bool = False,
) -> PairLogps:
    """One sharded no-grad pass of `model` over `dataset` (the reference pass and the eval passes)."""
    return ref_cache.compute_pair_logps(
        model,
        dataset,
        make_batch=lambda idx: make_batch(cfg, pad_token_id, dataset, idx, engine.device, shared=shared),
        forward=response_logps,
        batch_pairs=pass_batch_pairs(cfg),
        accelerator=engine.accelerator,
        desc=desc,
    )


def preference_accuracy(logps: PairLogps, normalised: bool) -> tuple[float, float]:
    """(fraction of pairs whose chosen response scores strictly higher, mean score margin); the score
    is the response's mean per-token log-prob for length-normalised losses, else its sum."""
    c, r = logps.chosen.double(), logps.rejected.double()
    if normalised:
        c = c / logps.chosen_tokens.clamp(min=1)
        r = r / logps.rejected_tokens.clamp(min=1)
    return float((c > r).double().mean()), float((c - r).mean())


def _broadcast(engine: Engine, value):
    if engine.world_size == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _digest(engine: Engine, name_or_path: str) -> str:
    from .checkpoint import model_digest

    return _broadcast(engine, model_digest(name_or_path) if engine.is_main else None)


def _key(cfg: DPOConfig, digest: str, data_hash: str, template: str) -> str:
    from ..model.policy import resolve_dtype

    return ref_cache.cache_key(
        model_digest=digest,
        data_hash=data_hash,
        loss_type=cfg.loss_type,
        max_seq_length=cfg.max_seq_length,
        template=template,
        dtype=f"{resolve_dtype(cfg.dtype)}",
    )


def _load_frozen(cfg: DPOConfig, tokenizer, name_or_path: str, device) -> torch.nn.Module:
    ref_cfg = dataclasses.replace(cfg, model_name_or_path=name_or_path, use_lora=False)
    return stage.load_policy(ref_cfg, tokenizer, trainable=False).model.to(device)


# ----------------------------------------------------------------------------- the stage


def make_policy_pairs(cfg: DPOConfig, engine: Engine, tokenizer) -> tuple[str, str | None]:
    """Samples the starting model's pairs (main process; the others wait, then reuse the files).
    Returns the (train, held-out or None) pair files."""
    pc = cfg.policy_pairs
    dest = Path(cfg.output_dir) / "policy_pairs"
    with engine.accelerator.main_process_first():
        maker = PairMaker(
            cfg.model_name_or_path,
            _digest(engine, cfg.model_name_or_path),
            tokenizer,
            pc,
            cfg.seed,
            cfg.dtype,
        )
        try:
            made = {"train": maker.make(pc.prompts, dest / "train.jsonl", "train", pc.limit)}
            if pc.eval_prompts:
                made["eval"] = maker.make(pc.eval_prompts, dest / "eval.jsonl", "eval")
        finally:
            maker.close()
    if engine.is_main:
        for split, meta in made.items():
            print(
                f"dpo: {meta['pairs']} {split} pairs from the policy's own answers to {meta['prompts']} prompts "
                f"(sample accuracy {meta['sample_accuracy']:.1%}; {meta['prompts_all_right']} all right, "
                f"{meta['prompts_all_wrong']} all wrong)",
                flush=True,
            )
    return str(dest / "train.jsonl"), str(dest / "eval.jsonl") if pc.eval_prompts else cfg.eval_dataset_mix


def run_dpo(cfg: DPOConfig, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Trains and publishes the DPO model into `cfg.output_dir` (resuming an interrupted run; a
    finished run with the same config is left as is). `on_step(step, metrics)` is called after
    every optimizer step (tests use it to interrupt a run)."""
    from ..data.tokenize import tokenizer_fingerprint

    out = Path(cfg.output_dir)
    if stage.already_done(cfg):
        return out
    engine = Engine(cfg, out, reduction="sum")
    tokenizer = stage.load_stage_tokenizer(cfg)
    train_mix, eval_mix = cfg.dataset_mix, cfg.eval_dataset_mix
    if cfg.policy_pairs.enabled:
        train_mix, eval_mix = make_policy_pairs(cfg, engine, tokenizer)
    # Data first: a bad file fails in seconds, before any model is loaded.
    with engine.accelerator.main_process_first():
        data = stage.load_tokenized(
            dataclasses.replace(cfg, dataset_mix=train_mix), tokenizer, kind="preference"
        )
        eval_data = None
        if eval_mix:
            eval_data = stage.load_tokenized(
                dataclasses.replace(cfg, dataset_mix=eval_mix), tokenizer, kind="preference"
            )
    plan = stage.make_plan(cfg, engine, len(data.dataset), train_mix)
    plan = LengthGroupedPlan(**dataclasses.asdict(plan), lengths=ref_cache.pair_lengths(data.dataset))
    policy = stage.load_policy(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    template = f"{cfg.chat_template}|bos={cfg.add_bos}|{tokenizer_fingerprint(tokenizer)}"
    start_digest = _digest(engine, cfg.model_name_or_path)
    separate_ref = cfg.loss_type != "simpo" and cfg.ref_model_name_or_path not in (
        None,
        "",
        cfg.model_name_or_path,
    )

    # A live reference is copied before the engine wraps (and, under ZeRO-3, shards) the policy.
    live_ref = None
    if cfg.loss_type != "simpo" and cfg.reference == "live":
        live_ref = (
            _load_frozen(cfg, tokenizer, cfg.ref_model_name_or_path, engine.device)
            if separate_ref
            else policy.frozen_copy().model.to(engine.device)
        )
    engine.prepare(policy.model, plan.num_steps)
    shared = check_shared_prompt(cfg, engine.model, data.dataset, pad, engine.device)

    # Reference log-probs of the training pairs: cached, computed by the starting policy itself (it is
    # the reference until the first optimizer step, so no second model is loaded) or by a separate
    # reference model that is freed again before training.
    ref_train, ref_info = None, {}
    if cfg.loss_type != "simpo" and cfg.reference == "cached":
        ref_name = cfg.ref_model_name_or_path if separate_ref else cfg.model_name_or_path
        ref_digest = _digest(engine, ref_name) if separate_ref else start_digest
        key = _key(cfg, ref_digest, data.data_hash, template)

        def compute() -> PairLogps:
            # a separate reference model lives only inside this call
            model = _load_frozen(cfg, tokenizer, ref_name, engine.device) if separate_ref else engine.model
            return score_pairs(
                cfg, model, data.dataset, engine, pad, desc="reference log-probs", shared=shared
            )

        ref_train, hit = ref_cache.cached_pair_logps(
            key,
            len(data.dataset),
            compute,
            engine.accelerator,
            meta={"model": ref_name, "data_hash": data.data_hash},
        )
        if separate_ref:
            import gc

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        ref_info = {
            "key": key,
            "path": str(ref_cache.cache_path(key)),
            "hit": hit,
            "model": ref_name,
            "model_digest": ref_digest,
        }

    # Held-out accuracy before training: the starting model's scores (cached like the reference; when
    # the starting model is the reference they are exactly the reference numbers of the eval pairs).
    eval_before = None
    if eval_data is not None:
        key = _key(cfg, start_digest, eval_data.data_hash, template)
        eval_before, _ = ref_cache.cached_pair_logps(
            key,
            len(eval_data.dataset),
            lambda: score_pairs(
                cfg, engine.model, eval_data.dataset, engine, pad, desc="eval (before)", shared=shared
            ),
            engine.accelerator,
            meta={"model": cfg.model_name_or_path, "data_hash": eval_data.data_hash},
        )

    if engine.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "dpo_reference.json").write_text(
            json.dumps(
                {
                    "mode": "none (simpo)" if cfg.loss_type == "simpo" else cfg.reference,
                    **ref_info,
                    "batch_layout": "shared_prompt"
                    if shared
                    else ("packed" if cfg.packing else "concatenated"),
                },
                indent=1,
            )
        )

    def micro_batch(indices):
        return make_batch(cfg, pad, data.dataset, indices, engine.device, ref_train, shared=shared)

    def step_hook(step: int, metrics: dict) -> None:
        metrics["pairs_per_s"] = metrics.get("units", 0.0) / max(metrics.get("step_seconds", 0.0), 1e-9)
        if on_step is not None:
            on_step(step, metrics)

    stage.train_loop(
        cfg,
        engine,
        plan,
        micro_batch,
        make_loss_fn(cfg, live_ref),
        desc="dpo",
        extra_state={"data_hash": data.data_hash},
        on_step=step_hook,
    )
    live_ref = None

    if eval_data is not None:
        after = score_pairs(
            cfg, engine.model, eval_data.dataset, engine, pad, desc="eval (after)", shared=shared
        )
        if engine.is_main:
            write_eval(cfg, out, eval_before, after, reference_is_start=not separate_ref)
    # Plots are drawn by a short child process: importing matplotlib and drawing costs the training
    # process ~35 MB of resident memory it would otherwise keep until exit.
    stage.finish(cfg, engine, policy, name="dpo", panels=[])
    if engine.is_main:
        plot_curves(out)
    return out


PANELS = [
    ("loss", ["loss", "dpo_loss", "nll"]),
    ("reward margin", ["rewards/margin"]),
    ("preference accuracy (train)", ["rewards/accuracy"]),
    ("rewards", ["rewards/chosen", "rewards/rejected"]),
    ("learning rate", ["lr"]),
]


def plot_curves(out: Path) -> None:
    """`dpo_curves.png` (loss, margin, accuracy, rewards, lr) from metrics.jsonl, in a child process.
    A plot is a convenience: failing to draw one is a warning, never a failed run."""
    import subprocess
    import sys

    code = (
        "import json, sys; from open_instruct.track import plot_metrics; "
        "plot_metrics(sys.argv[1], sys.argv[2], [tuple(p) for p in json.loads(sys.argv[3])], title=sys.argv[4])"
    )
    # the child must import this very package, installed or not
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(out / "metrics.jsonl"),
                str(out / "dpo_curves.png"),
                json.dumps(PANELS),
                f"dpo: {out}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        if proc.returncode:
            log.warning("dpo: could not draw %s: %s", out / "dpo_curves.png", proc.stderr.strip()[-500:])
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("dpo: could not draw %s: %s", out / "dpo_curves.png", e)


def write_eval(
    cfg: DPOConfig, out: Path, before: PairLogps, after: PairLogps, reference_is_start: bool
) -> dict:
    """eval.json: {"preference_accuracy": {"before", "after"}, "num_pairs", ...} (see docs/dpo.md)."""
    normalised = cfg.loss_type in LENGTH_NORMALISED
    acc_before, margin_before = preference_accuracy(before, normalised)
    acc_after, margin_after = preference_accuracy(after, normalised)
    result = {
        "preference_accuracy": {"before": acc_before, "after": acc_after},
        "num_pairs": len(after),
        "score": "mean_logp" if normalised else "sum_logp",
        "margin": {"before": margin_before, "after": margin_after},
    }
    if cfg.loss_type != "simpo" and reference_is_start:
        # DPO's own implicit-reward accuracy against the reference (0 before training: all ties)
        res = preference_loss(
            after.chosen,
            after.rejected,
            before.chosen,
            before.rejected,
            after.chosen_tokens,
            after.rejected_tokens,
            loss_type=cfg.loss_type,
            beta=cfg.beta,
        )
        result["reward_accuracy"] = float(res.accuracies.mean())
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "eval.json")
    log.info("dpo: held-out preference accuracy %.3f -> %.3f (%d pairs)", acc_before, acc_after, len(after))
    return result


# ----------------------------------------------------------------------------- CLI


def config_from_args(args) -> DPOConfig:
    """--config FILE (optional) + the short form (--model/--data/--output, which win over the file)
    + --set overrides (which win over both). Defaults are DPOConfig's (Tülu 3 8B)."""
    short = {
        key: value
        for key, value in (
            ("model_name_or_path", getattr(args, "model", None)),
            ("dataset_mix", getattr(args, "data", None)),
            ("output_dir", getattr(args, "output", None)),
        )
        if value
    }
    overrides = getattr(args, "overrides", None) or []
    if not args.config and not short and not overrides:
        raise ConfigError(
            "dpo: give --config FILE.yaml, or --model PATH --data FILE --output DIR (and --set key=value)"
        )
    data = load_yaml(args.config) if args.config else {}
    data.update(short)
    data = apply_overrides(data, overrides)
    return from_dict(DPOConfig, data, str(args.config) if args.config else "dpo")


def dpo_command(args) -> int:
    cfg = config_from_args(args)
    out = run_dpo(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not per process
        return 0
    ev = out / "eval.json"
    if ev.is_file():
        res = json.loads(ev.read_text())
        acc = res["preference_accuracy"]
        print(
            f"dpo: {out}  held-out preference accuracy {acc['before']:.3f} -> {acc['after']:.3f} "
            f"({res['num_pairs']} pairs)"
        )
    else:
        print(f"dpo: {out}")
    return 0
