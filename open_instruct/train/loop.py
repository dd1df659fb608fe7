"""The step loop every stage shares (SFT, DPO and the RLVR learner): resume from the newest intact
checkpoint, the resolved config on disk, metrics (metrics.jsonl, progress bar, wandb), periodic
checkpoints, and a clear line on Ctrl-C.

    with StepLoop(cfg, engine, total_steps, desc="sft", data_hash=data.data_hash) as loop:
        for step in loop.steps():               # 0-based; resumes where the last checkpoint left off
            metrics = ...one optimizer (or RL) step...
            loop.end_step(step + 1, metrics)    # logs, checkpoints when due
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..config import to_dict
from ..errors import ConfigError, Interrupted
from ..io import atomic_write_yaml
from ..track import Tracker
from . import checkpoint as ckpt

log = logging.getLogger(__name__)


def write_resolved_config(cfg, out: Path) -> None:
    atomic_write_yaml(Path(out) / "resolved_config.yaml", to_dict(cfg))


class StepLoop:
    def __init__(
        self,
        cfg,
        engine,
        total_steps: int,
        desc: str,
        data_hash: str | None = None,
        bar_keys: tuple[str, ...] = ("loss", "lr", "tokens_per_s"),
    ):
        self.cfg, self.engine, self.total, self.desc = cfg, engine, total_steps, desc
        self.out = Path(cfg.output_dir)
        self.data_hash = data_hash
        if engine.is_main:
            write_resolved_config(cfg, self.out)
        state = engine.resume()
        self.start = state["step"] if state else 0
        if state and data_hash and state.get("data_hash") not in (None, data_hash):
            raise ConfigError(
                f"{self.out}: the checkpoint was trained on different data "
                f"(hash {state['data_hash']} != {data_hash}); use a new output_dir"
            )
        self.state = state or {}
        self.tracker = Tracker(
            self.out,
            total_steps=total_steps,
            start_step=self.start,
            desc=desc,
            enabled=engine.is_main,
            wandb_project=cfg.wandb_project,
            wandb_run_name=cfg.wandb_run_name,
            config=to_dict(cfg),
            bar_keys=bar_keys,
        )
        self.step = self.start
        self._t0 = time.time()
        if self.start and engine.is_main:
            log.info("%s: resuming at step %d/%d", desc, self.start, total_steps)

    def steps(self) -> range:
        return range(self.start, self.total)

    def end_step(self, step: int, metrics: dict, extra_state: dict | None = None) -> None:
        """After `step` steps are done: log (every `logging_steps` and the last), checkpoint (every
        `checkpointing_steps`, not the last: the published model is the final state)."""
        self.step = step
        cfg = self.cfg
        if step % max(1, cfg.logging_steps) == 0 or step == self.total:
            self.tracker.log(step, metrics)
        if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0 and step < self.total:
            self.engine.save_checkpoint(step, {"data_hash": self.data_hash, **(extra_state or {})})

    def close(self) -> None:
        self.tracker.close()
        if self.engine.is_main and self.step > self.start:
            log.info("%s: %d steps in %.1fs", self.desc, self.step - self.start, time.time() - self._t0)

    def __enter__(self) -> StepLoop:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is KeyboardInterrupt:
            newest = ckpt.latest_valid(self.out / "checkpoints") if self.engine.is_main else None
            where = (
                f"the newest checkpoint is step {newest[0]}; rerun the same command to resume from it"
                if newest
                else "no checkpoint yet (set checkpointing_steps); a rerun starts the stage again"
            )
            raise Interrupted(
                f"{self.desc} interrupted at step {self.step}/{self.total} in {self.out}: {where}"
            )
