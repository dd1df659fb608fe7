"""SFT stage: token cross-entropy on assistant turns, `sum` (Tülu 3) or `mean` loss reduction.

open-instruct sft --config sft.yaml [--set key=value ...]
accelerate launch --num_processes 2 -m open_instruct.cli sft --config sft.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..config import load_config
from ..errors import ConfigError
from . import stage
from .engine import Engine, LossOut, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class SFTConfig(TrainConfig):
    # Tülu 3 summed the per-token loss: every token weighs the same, whatever its sequence length.
    loss_reduction: Literal["sum", "mean"] = "sum"
    learning_rate: float = 5e-6


def sft_loss(model: torch.nn.Module, batch: dict) -> LossOut:
    from ..model.policy import token_logprobs

    lp = token_logprobs(model, batch)
    return LossOut(total=-lp.sum(), units=float((batch["labels"] != -100).sum()))


def run_sft(cfg: SFTConfig) -> Path:
    out = Path(cfg.output_dir)
    if stage.already_done(cfg):
        return out
    engine = Engine(cfg, out, reduction=cfg.loss_reduction)
    tokenizer = stage.load_stage_tokenizer(cfg)
    with engine.accelerator.main_process_first():
        data = stage.load_tokenized(cfg, tokenizer, kind="sft")
    plan = stage.make_plan(cfg, engine, len(data.dataset))
    policy = stage.load_policy(cfg, tokenizer)
    engine.prepare(policy.model, plan.num_steps)

    def micro_batch(indices):
        return stage.collate(cfg, tokenizer, stage.rows(data.dataset, indices))

    stage.train_loop(
        cfg, engine, plan, micro_batch, sft_loss, desc="sft", extra_state={"data_hash": data.data_hash}
    )
    stage.finish(
        cfg,
        engine,
        policy,
        panels=[("loss", ["loss"]), ("learning rate", ["lr"]), ("grad norm", ["grad_norm"])],
        name="sft",
    )
    return out


def sft_command(args) -> int:
    if not args.config and not args.overrides:
        raise ConfigError("sft: give --config FILE.yaml (and/or --set key=value)")
    cfg = load_config(SFTConfig, args.config, args.overrides)
    run_sft(cfg)
    return 0
