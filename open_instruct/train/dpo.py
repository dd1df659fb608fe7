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

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import load_config
from ..errors import ConfigError
from ..io import atomic_write_json
from . import ref_cache, stage
from .config import LENGTH_NORMALISED, DPOConfig, short_form
from .dpo_batch import LengthGroupedPlan, check_shared_prompt, make_batch, response_logps
from .dpo_loss import preference_loss
from .engine import Engine, LossOut
from .ref_cache import PairLogps

log = logging.getLogger(__name__)


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


def _digest(engine: Engine, name_or_path: str) -> str:
    from .checkpoint import model_digest

    return engine.broadcast(model_digest(name_or_path) if engine.is_main else None)


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


# ----------------------------------------------------------------------------- the stage


def make_policy_pairs(cfg: DPOConfig, engine: Engine, tokenizer) -> tuple[str, str | None]:
    """Samples the starting model's pairs (main process; the others wait, then reuse the files).
    Returns the (train, held-out or None) pair files."""
    pc = cfg.policy_pairs
    dest = Path(cfg.output_dir) / "policy_pairs"
    from ..generation.policy_pairs import PairMaker

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
    stage.check_sources(cfg)  # every model it loads is there: one line, before anything heavy
    engine = Engine(cfg, out, reduction="sum")
    tokenizer = stage.load_stage_tokenizer(cfg)
    train_mix, eval_mix = cfg.dataset_mix, cfg.eval_dataset_mix
    if cfg.policy_pairs.enabled:
        train_mix, eval_mix = make_policy_pairs(cfg, engine, tokenizer)
    # Data first: a bad file fails in seconds, before any model is loaded.
    with engine.accelerator.main_process_first():
        data = stage.load_tokenized(cfg, tokenizer, kind="preference", mix=train_mix)
        eval_data = (
            stage.load_tokenized(cfg, tokenizer, kind="preference", mix=eval_mix) if eval_mix else None
        )
    plan = stage.make_plan(cfg, engine, len(data.dataset), train_mix)
    plan = LengthGroupedPlan(**vars(plan), lengths=ref_cache.pair_lengths(data.dataset))
    policy = stage.load_policy(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    template = f"{cfg.chat_template}|bos={cfg.add_bos}|{tokenizer_fingerprint(tokenizer)}"
    start_digest = _digest(engine, cfg.model_name_or_path)
    uses_ref = cfg.loss_type != "simpo"
    ref_name = cfg.ref_model_name_or_path or cfg.model_name_or_path
    separate_ref = uses_ref and ref_name != cfg.model_name_or_path

    # A live reference is copied before the engine wraps (and, under ZeRO-3, shards) the policy.
    live_ref = None
    if uses_ref and cfg.reference == "live":
        live_ref = stage.load_reference(cfg, tokenizer, engine, policy, ref_name)
    engine.prepare(policy.model, plan.num_steps)
    shared = check_shared_prompt(cfg, engine.model, data.dataset, pad, engine.device)

    # Reference log-probs of the training pairs: cached, computed by the starting policy itself (it is
    # the reference until the first optimizer step, so no second model is loaded) or by a separate
    # reference model that is freed again before training.
    ref_train, ref_info = None, {}
    if uses_ref and cfg.reference == "cached":
        ref_digest = _digest(engine, ref_name) if separate_ref else start_digest
        key = _key(cfg, ref_digest, data.data_hash, template)

        def compute() -> PairLogps:
            # a separate reference model lives only inside this call
            model = (
                stage.load_reference(cfg, tokenizer, engine, None, ref_name) if separate_ref else engine.model
            )
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
        layout = "shared_prompt" if shared else ("packed" if cfg.packing else "concatenated")
        mode = cfg.reference if uses_ref else "none (simpo)"
        atomic_write_json(out / "dpo_reference.json", {"mode": mode, **ref_info, "batch_layout": layout})

    def micro_batch(indices):
        return make_batch(cfg, pad, data.dataset, indices, engine.device, ref_train, shared=shared)

    def step_hook(step: int, metrics: dict) -> None:
        metrics["pairs_per_s"] = metrics.get("units", 0.0) / max(metrics.get("step_seconds", 0.0), 1e-9)
        if on_step is not None:
            on_step(step, metrics)

    stage.train_loop(
        cfg, engine, plan, micro_batch, make_loss_fn(cfg, live_ref), "dpo", data.data_hash, step_hook
    )
    live_ref = None

    if eval_data is not None:
        after = score_pairs(
            cfg, engine.model, eval_data.dataset, engine, pad, desc="eval (after)", shared=shared
        )
        if engine.is_main:
            write_eval(cfg, out, eval_before, after, reference_is_start=not separate_ref)
    stage.finish(cfg, engine, policy, name="dpo")
    return out


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
    atomic_write_json(out / "eval.json", result)
    log.info("dpo: held-out preference accuracy %.3f -> %.3f (%d pairs)", acc_before, acc_after, len(after))
    return result


# ----------------------------------------------------------------------------- CLI


def config_from_args(args) -> DPOConfig:
    """--config FILE (optional) + the short form (--model/--data/--output, which win over the file)
    + --set overrides (which win over both). Defaults are DPOConfig's (Tülu 3 8B)."""
    short, overrides = short_form(args), getattr(args, "overrides", None) or []
    if not args.config and not short and not overrides:
        raise ConfigError(
            "dpo: give --config FILE.yaml, or --model PATH --data FILE --output DIR (and --set key=value)"
        )
    return load_config(DPOConfig, args.config, overrides, on_top=short, where="dpo")


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
