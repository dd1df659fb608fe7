"""The plumbing SFT and DPO share around the engine: tokenizer and data loading, the batch plan,
the step loop with resume/checkpoints/tracking, and publishing the final model."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ..config import relative_to_run, to_dict
from ..errors import ConfigError
from ..model.policy import LoraSettings, Policy, load_tokenizer
from ..track import Tracker, plot_metrics
from . import checkpoint as ckpt
from .engine import BatchPlan, Engine, LossOut, TrainConfig

log = logging.getLogger(__name__)


def load_stage_tokenizer(cfg: TrainConfig):
    return load_tokenizer(
        cfg.tokenizer_name_or_path or cfg.model_name_or_path,
        chat_template=cfg.chat_template,
        add_bos=cfg.add_bos,
        trust_remote_code=cfg.trust_remote_code,
    )


def load_tokenized(cfg: TrainConfig, tokenizer, kind: str, **settings):
    """The stage's data mix, validated and tokenised (cached on disk by content + settings)."""
    from ..data.mixes import load_mix
    from ..data.tokenize import tokenize_data

    mix = load_mix(cfg.dataset_mix, kind=kind)
    workers = cfg.preprocessing_num_workers if cfg.preprocessing_num_workers > 1 else None
    return tokenize_data(
        mix, tokenizer, kind, max_seq_length=cfg.max_seq_length, num_proc=workers, **settings
    )


def rows(dataset, indices) -> list[dict]:
    """Examples at `indices` as dicts (one Arrow read, not one per row)."""
    cols = dataset[[int(i) for i in indices]]
    keys = list(cols)
    return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]


def make_plan(cfg: TrainConfig, engine: Engine, num_examples: int, data_name: str | None = None) -> BatchPlan:
    plan = BatchPlan(
        num_examples, engine.effective_batch, cfg.num_train_epochs, cfg.seed, cfg.max_train_steps
    )
    if plan.steps_per_epoch == 0:
        raise ConfigError(
            f"{data_name or cfg.dataset_mix}: {num_examples} usable examples, fewer than one effective batch "
            f"({engine.effective_batch} = {cfg.per_device_train_batch_size} per device x "
            f"{engine.accumulation} accumulation x {engine.world_size} processes)"
        )
    return plan


def load_policy(cfg: TrainConfig, tokenizer, trainable: bool = True) -> Policy:
    lora = LoraSettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) if cfg.use_lora else None
    return Policy.load(
        cfg.model_name_or_path,
        tokenizer=tokenizer,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        gradient_checkpointing=cfg.gradient_checkpointing,
        lora=lora,
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle,
        trainable=trainable,
    )


def collate(cfg: TrainConfig, tokenizer, examples: list[dict]) -> dict:
    from ..data.collate import pack_collate, pad_collate

    if cfg.packing:
        return pack_collate(examples, max_tokens_per_row=cfg.max_seq_length)
    return pad_collate(examples, pad_token_id=tokenizer.pad_token_id)


def already_done(cfg) -> bool:
    """True when output_dir holds an intact finished model trained with this very config; a
    finished run with a different config is an error (never silently reused or overwritten)."""
    out = Path(cfg.output_dir)
    if ckpt.verify_model(out) is None:
        return False
    saved = out / "resolved_config.yaml"
    old = yaml.safe_load(saved.read_text()) if saved.exists() else None
    # compared relative to the output dir: a moved output dir still holds the same run
    if old is not None and relative_to_run(old, old.get("output_dir", out)) == relative_to_run(
        to_dict(cfg), out
    ):
        log.info("%s already holds the finished model for this config; nothing to do", out)
        return True
    raise ConfigError(f"{out}: holds a finished run with a different config; choose a new output_dir")


def write_resolved_config(cfg, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "resolved_config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(out / "resolved_config.yaml")


def train_loop(
    cfg: TrainConfig,
    engine: Engine,
    plan: BatchPlan,
    micro_batch: Callable,
    loss_fn: Callable[..., LossOut],
    desc: str,
    extra_state: dict | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> int:
    """Steps from the last complete checkpoint (or 0) to `plan.num_steps`; returns the last step."""
    out = Path(cfg.output_dir)
    if engine.is_main:
        write_resolved_config(cfg, out)
    state = engine.resume()
    start = state["step"] if state else 0
    if state and extra_state and state.get("data_hash") not in (None, extra_state.get("data_hash")):
        raise ConfigError(
            f"{out}: the checkpoint was trained on different data "
            f"(hash {state['data_hash']} != {extra_state['data_hash']}); use a new output_dir"
        )
    tracker = Tracker(
        out,
        total_steps=plan.num_steps,
        start_step=start,
        desc=desc,
        enabled=engine.is_main,
        wandb_project=cfg.wandb_project,
        wandb_run_name=cfg.wandb_run_name,
        config=to_dict(cfg),
    )
    if start and engine.is_main:
        log.info("%s: resuming at step %d/%d", desc, start, plan.num_steps)
    t_start = time.time()
    for step in range(start, plan.num_steps):
        shards = plan.shard(step, engine.process_index, engine.world_size, engine.accumulation)
        metrics = engine.step([micro_batch(ix) for ix in shards], loss_fn)
        metrics["epoch"] = (step + 1) / plan.steps_per_epoch
        if on_step is not None:
            on_step(step + 1, metrics)
        if (step + 1) % max(1, cfg.logging_steps) == 0 or step + 1 == plan.num_steps:
            tracker.log(step + 1, metrics)
        if (
            cfg.checkpointing_steps
            and (step + 1) % cfg.checkpointing_steps == 0
            and step + 1 < plan.num_steps
        ):
            engine.save_checkpoint(step + 1, extra_state)
    tracker.close()
    if engine.is_main:
        log.info("%s: %d steps in %.1fs", desc, plan.num_steps - start, time.time() - t_start)
    return plan.num_steps


def finish(cfg: TrainConfig, engine: Engine, policy: Policy, panels: list, name: str) -> str | None:
    """Gathers the weights, publishes the HF checkpoint into output_dir atomically, plots metrics.
    Returns the model digest (main process)."""
    out = Path(cfg.output_dir)
    state_dict = engine.full_state_dict()
    digest = None
    if engine.is_main:
        tmp = out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.model = engine.unwrapped()
        policy.save(tmp, state_dict=state_dict)
        digest = ckpt.publish_model(tmp, out)
        plot_metrics(out / "metrics.jsonl", out / f"{name}_curves.png", panels, title=f"{name}: {out}")
        (out / "train_summary.json").write_text(json.dumps({"stage": name, "model_digest": digest}, indent=1))
    engine.accelerator.wait_for_everyone()
    return digest
