"""SFT stage: token cross-entropy on assistant turns, `sum` (Tülu 3) or `mean` loss reduction.

open-instruct sft --config sft.yaml [--set key=value ...]
open-instruct sft --model PATH_OR_ID --data data.jsonl --output DIR [--set key=value ...]
accelerate launch --num_processes 2 -m open_instruct.cli sft --config sft.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..config import load_config
from ..errors import ConfigError
from . import stage
from .config import SFTConfig, short_form
from .engine import Engine, LossOut

log = logging.getLogger(__name__)


def sft_loss(model: torch.nn.Module, batch: dict) -> LossOut:
    from ..model.policy import token_logprobs

    lp = token_logprobs(model, batch)
    return LossOut(total=-lp.sum(), units=float((batch["labels"] != -100).sum()))


def run_sft(cfg: SFTConfig) -> Path:
    out = Path(cfg.output_dir)
    if stage.already_done(cfg):
        return out
    stage.check_sources(cfg)  # every model it loads is there: one line, before anything heavy
    engine = Engine(cfg, out, reduction=cfg.loss_reduction)
    tokenizer = stage.load_stage_tokenizer(cfg)
    with engine.accelerator.main_process_first():
        data = stage.load_tokenized(cfg, tokenizer, kind="sft")
    plan = stage.make_plan(cfg, engine, len(data.dataset))
    policy = stage.load_policy(cfg, tokenizer)
    engine.prepare(policy.model, plan.num_steps)

    def micro_batch(indices):
        from ..data.examples import take

        return stage.collate(cfg, tokenizer, take(data.dataset, indices))

    stage.train_loop(cfg, engine, plan, micro_batch, sft_loss, "sft", data.data_hash)
    stage.finish(cfg, engine, policy, name="sft")
    return out


def sft_command(args) -> int:
    short, overrides = short_form(args), getattr(args, "overrides", None) or []
    if not args.config and not short and not overrides:
        raise ConfigError(
            "sft: give --config FILE.yaml, or --model PATH --data FILE --output DIR (and --set key=value)"
        )
    run_sft(load_config(SFTConfig, args.config, overrides, on_top=short, where="sft"))
    return 0
