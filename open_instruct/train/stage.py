"""What SFT, DPO and the RLVR learner share around the engine: the tokenizer, the stage's data, the batch
plan, the policy (and its frozen reference), the "already finished?" check, and publishing the final
model. The step loop itself is loop.py."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ..config import config_diff, describe_diff, to_dict
from ..errors import ConfigError
from ..io import atomic_write_json
from ..model.lora import MERGED
from ..model.policy import LoraSettings, Policy, load_tokenizer
from ..track import plot_stage
from . import checkpoint as ckpt
from .config import TrainConfig
from .engine import BatchPlan, Engine
from .loop import StepLoop

log = logging.getLogger(__name__)


def load_stage_tokenizer(cfg: TrainConfig):
    """The stage's tokenizer with the template `chat_template` asks for (auto: the tokenizer's own,
    else tulu), resolved here, before any cache key is computed from it; the choice is logged."""
    from ..data.templates import choose_template

    path = cfg.tokenizer_name_or_path or cfg.model_name_or_path
    tok = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    choose_template(tok, cfg.chat_template, add_bos=cfg.add_bos, source=path)
    return tok


def load_tokenized(cfg: TrainConfig, tokenizer, kind: str, mix: str | None = None, **settings):
    """The stage's data mix (or `mix`), validated and tokenised (cached on disk by content + settings)."""
    from ..data.mixes import load_mix
    from ..data.tokenize import tokenize_data

    loaded = load_mix(mix or cfg.dataset_mix, kind=kind)
    workers = cfg.preprocessing_num_workers if cfg.preprocessing_num_workers > 1 else None
    return tokenize_data(
        loaded, tokenizer, kind, max_seq_length=cfg.max_seq_length, num_proc=workers, **settings
    )


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


def load_policy(
    cfg: TrainConfig, tokenizer, trainable: bool = True, name_or_path: str | None = None
) -> Policy:
    lora = (
        LoraSettings(
            rank=cfg.lora_rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=cfg.lora_targets,
            save_merged=cfg.lora_save_merged,
            load_in_4bit=cfg.load_in_4bit,
        )
        if cfg.use_lora and trainable
        else None
    )
    return Policy.load(
        name_or_path or cfg.model_name_or_path,
        tokenizer=tokenizer,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        gradient_checkpointing=cfg.gradient_checkpointing,
        lora=lora,
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle,
        trainable=trainable,
    )


def load_reference(
    cfg: TrainConfig,
    tokenizer,
    engine: Engine,
    policy: Policy | None = None,
    name_or_path=None,
    shard: bool = False,
):
    """The frozen reference model of DPO (`reference: live`, or a separate reference for the cached pass)
    and RLVR (the KL term), ready for no-grad forwards on this engine. It is the starting policy (a copy
    of `policy`, taken before the engine wraps it) or the checkpoint `name_or_path`. Under ZeRO-3 the
    policy was loaded as shards and a copy of shards is no model: the reference is loaded again (sharded
    too) and run by its own optimizer-less DeepSpeed engine; `shard` does that under ZeRO-1/2 too
    (Engine.prepare_frozen)."""
    name = name_or_path or cfg.model_name_or_path
    if policy is not None and name == cfg.model_name_or_path and not engine.zero3:
        model = policy.frozen_copy().model
    else:
        model = load_policy(cfg, tokenizer, trainable=False, name_or_path=name).model
    return engine.prepare_frozen(model, shard=shard)


def collate(cfg: TrainConfig, tokenizer, examples: list[dict]) -> dict:
    from ..data.collate import pack_collate, pad_collate

    if cfg.packing:
        return pack_collate(examples, max_tokens_per_row=cfg.max_seq_length)
    return pad_collate(examples, pad_token_id=tokenizer.pad_token_id)


def check_sources(cfg) -> None:
    """This machine can run the stage (QLoRA: CUDA + bitsandbytes), every model and tokenizer the stage
    will load is there (a local dir with config.json, or a hub id the hub or the offline cache has), and
    RLVR's prompt + response fit its positions: one line naming the key. Each stage runner calls it right after `already_done` (a finished stage needs no model,
    nor the network), before anything heavy. Not part of `validate`: in a recipe a stage's model is the
    previous stage's output, made later."""
    from ..model.source import check_model_source

    name = type(cfg).__name__.removesuffix("Config").lower()
    cfg.check_machine(name)
    check_model_source(cfg.model_name_or_path, f"{name} model_name_or_path")
    tok_key = "tokenizer_name_or_path" if cfg.tokenizer_name_or_path else "model_name_or_path"
    check_model_source(getattr(cfg, tok_key), f"{name} {tok_key}", kind="tokenizer")
    for key in ("ref_model_name_or_path", "value_model_name_or_path"):
        if getattr(cfg, key, None):
            check_model_source(getattr(cfg, key), f"{name} {key}")
    if hasattr(cfg, "response_length"):  # RLVR: its vLLM engines refuse more than the model's positions
        from ..generation.evaluate import model_context

        context = model_context(cfg.model_name_or_path, f"{name} model_name_or_path")
        if context and cfg.max_prompt_length + cfg.response_length > context:
            raise ConfigError(
                f"{name} max_prompt_length: {cfg.max_prompt_length} + response_length {cfg.response_length} "
                f"exceed the {context} positions of {cfg.model_name_or_path}; lower one of them"
            )


def already_done(cfg) -> bool:
    """True when output_dir holds an intact finished model trained with this very config (the same rule
    recipes use: config.config_diff); a finished run with a different config is an error, never
    silently reused or overwritten."""
    out = Path(cfg.output_dir)
    if ckpt.verify_model(out) is None:
        return False
    saved = out / "resolved_config.yaml"
    old = yaml.safe_load(saved.read_text()) if saved.exists() else None
    new = to_dict(cfg)
    if old is not None:
        # paths inside the output dir compare relative to it: a moved output dir holds the same run
        diff = config_diff(old, new, type(cfg), root=lambda c: c.get("output_dir") or out)
        if not diff:
            log.info("%s already holds the finished model for this config; nothing to do", out)
            return True
        raise ConfigError(
            f"{out}: holds a finished run with a different config ({describe_diff(old, new, diff)}); "
            f"choose a new output_dir"
        )
    raise ConfigError(f"{out}: holds a finished model with no resolved_config.yaml; choose a new output_dir")


def train_loop(
    cfg, engine: Engine, plan: BatchPlan, micro_batch, loss_fn, desc: str, data_hash=None, on_step=None
) -> int:
    """SFT's and DPO's loop: each step runs this process's micro-batches through the engine."""
    with StepLoop(cfg, engine, plan.num_steps, desc, data_hash) as loop:
        for step in loop.steps():
            shards = plan.shard(step, engine.process_index, engine.world_size, engine.accumulation)
            metrics = engine.step([micro_batch(ix) for ix in shards], loss_fn)
            metrics["epoch"] = (step + 1) / plan.steps_per_epoch
            if on_step is not None:
                on_step(step + 1, metrics)
            loop.end_step(step + 1, metrics)
    return plan.num_steps


def publish(out: Path, save, name: str, summary: dict | None = None) -> str:
    """Main process: `save(tmp_dir)` writes the HF checkpoint, which is moved into `out` atomically
    (model_manifest.json last); then the stage's plots and train_summary.json. Returns the digest."""
    import shutil

    tmp = out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    # merged weights made on demand for an earlier adapter in this dir (model/lora.py) are stale now
    shutil.rmtree(out / MERGED, ignore_errors=True)
    save(tmp)
    digest = ckpt.publish_model(tmp, out)
    plot_stage(out / "metrics.jsonl", out / f"{name}_curves.png", name, title=f"{name}: {out}")
    atomic_write_json(out / "train_summary.json", {"stage": name, "model_digest": digest, **(summary or {})})
    return digest


def finish(cfg: TrainConfig, engine: Engine, policy: Policy, name: str) -> str | None:
    """Gathers the weights (every process must call it) and publishes the policy (main process).
    Returns the model digest on the main process."""
    out = Path(cfg.output_dir)
    state_dict = engine.full_state_dict()
    digest = None
    if engine.is_main:
        policy.model = engine.unwrapped()
        digest = publish(out, lambda tmp: policy.save(tmp, state_dict=state_dict), name)
    engine.accelerator.wait_for_everyone()
    return digest
