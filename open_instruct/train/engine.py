"""The one training engine behind SFT, DPO and the RL learner.

Accelerate does the distribution (one CPU process, DDP over gloo/NCCL, DeepSpeed ZeRO-2/3 from
the shipped configs); this module adds what the stages share: AdamW without weight decay on
norms and biases, a warmup + decay schedule, gradient accumulation with the `sum`/`mean` loss
reductions, clipping, seeding, atomic checkpoints and exact resume.

Loss reduction. A stage's loss function returns, per micro-batch, the *sum* of its per-unit
losses (units = trained tokens for SFT, pairs for DPO) and the number of units.
- `sum`: every unit in the effective batch (all accumulation steps, all processes) weighs the
  same: gradient = (1/N) * sum of all units' gradients, N = units in the effective batch.
- `mean`: each micro-batch is averaged over its own units, then micro-batches are averaged; a
  token in a micro-batch with few trained tokens weighs more than one in a long micro-batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..io import atomic_write_json
from ..logs import prints_to_log
from . import checkpoint as ckpt
from .config import TrainConfig

log = logging.getLogger(__name__)

DS_CONFIG_DIR = Path(__file__).parent / "ds_configs"


@dataclass
class BatchPlan:
    """Which examples every optimizer step sees: a seeded permutation per epoch, cut into effective
    batches (a trailing partial batch is dropped). Pure function of (seed, step), so a resumed run
    sees exactly the examples an uninterrupted one would."""

    num_examples: int
    effective_batch: int
    num_epochs: float
    seed: int
    max_steps: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.effective_batch

    @property
    def num_steps(self) -> int:
        if math.isinf(self.num_epochs):  # RL: as many passes over the prompts as the steps need
            return self.max_steps
        if self.max_steps:  # as HF Trainer and open-instruct: max steps win, epochs extend if needed
            return self.max_steps
        return int(math.ceil(self.steps_per_epoch * self.num_epochs))

    def indices(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return perm[k * self.effective_batch : (k + 1) * self.effective_batch]

    def shard(self, step: int, process_index: int, world_size: int, accumulation: int) -> list[np.ndarray]:
        """This process's micro-batches (lists of example indices) for `step`."""
        idx = self.indices(step)
        per_proc = len(idx) // world_size
        mine = idx[process_index * per_proc : (process_index + 1) * per_proc]
        return np.array_split(mine, accumulation)


@dataclass
class LossOut:
    total: torch.Tensor  # sum of per-unit losses in the micro-batch (requires grad)
    units: float  # trained tokens (SFT) or pairs (DPO) in the micro-batch
    metrics: dict[str, float] = field(default_factory=dict)  # unit-weighted sums, averaged by the engine


def no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
    )


def lr_lambda(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def _deepspeed_config(
    name: str, micro_batch: int, accumulation: int, max_grad_norm: float, bf16: bool
) -> dict:
    path = DS_CONFIG_DIR / f"{name}.json" if name in ("zero2", "zero3") else Path(name)
    cfg = json.loads(path.read_text())
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_accumulation_steps"] = accumulation
    cfg.pop("train_batch_size", None)
    cfg["gradient_clipping"] = max_grad_norm if max_grad_norm > 0 else 0.0
    cfg["bf16"] = {"enabled": bf16}
    return cfg


def _single_process_group_env() -> None:
    """The variables torch.distributed reads, for a process group of one started without a launcher
    (a one-process DeepSpeed stage run in the recipe's own process)."""
    import socket

    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)


def make_accelerator(
    deepspeed: str | None,
    accumulation: int,
    micro_batch: int,
    max_grad_norm: float,
    bf16: bool,
    timeout_s: float | None = None,
):
    """An Accelerator that does the right thing on CPU (gloo) and GPU (NCCL), with or without DeepSpeed.
    `timeout_s` bounds every collective: when a process of the run dies (a node lost, a SIGKILL), the
    others fail after it instead of waiting in a collective forever."""
    from datetime import timedelta

    from accelerate import Accelerator, PartialState
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    on_cpu = not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    timeout = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    handlers = [InitProcessGroupKwargs(**timeout)] if timeout else []
    if deepspeed:
        # accelerate 1.15 on a machine without GPUs: `cpu=True` silently drops DeepSpeed, and without
        # a gloo state made first every rank believes it is rank 0 of 1.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate reads it when building its state
        if not distributed:
            _single_process_group_env()  # DeepSpeed needs a process group, even of one
        with prints_to_log("deepspeed.prints"):  # its comm op build, once per process
            if on_cpu:
                PartialState(backend="gloo", **timeout)
            plugin = DeepSpeedPlugin(
                hf_ds_config=_deepspeed_config(deepspeed, micro_batch, accumulation, max_grad_norm, bf16)
            )
            return Accelerator(
                gradient_accumulation_steps=accumulation, deepspeed_plugin=plugin, kwargs_handlers=handlers
            )
    if on_cpu and distributed:
        PartialState(backend="gloo", cpu=True, **timeout)  # without cpu=True every CPU rank trains alone
    return Accelerator(
        cpu=on_cpu,
        gradient_accumulation_steps=accumulation,
        mixed_precision="bf16" if bf16 else "no",
        kwargs_handlers=handlers,
    )


class Engine:
    """Owns the accelerator, optimizer, scheduler and checkpoints of one training run."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, reduction: Literal["sum", "mean"] = "mean"):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.reduction = reduction
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.accumulation = cfg.accumulation_steps(world)
        # bf16 autocast only where it is fast; weights keep the dtype they were loaded in
        self.bf16 = (
            cfg.dtype in ("auto", "bfloat16") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        )
        self.accelerator = make_accelerator(
            cfg.deepspeed,
            self.accumulation,
            cfg.per_device_train_batch_size,
            cfg.max_grad_norm,
            self.bf16,
            cfg.dist_timeout_s,
        )
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.model = None
        self.optimizer = None
        self.scheduler = None

    # ---- properties ----------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def effective_batch(self) -> int:
        return self.cfg.per_device_train_batch_size * self.accumulation * self.world_size

    # ---- setup -----------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, num_training_steps: int) -> torch.nn.Module:
        self.num_training_steps = num_training_steps
        optimizer = build_optimizer(model, self.cfg)
        warmup = int(math.ceil(self.cfg.warmup_ratio * num_training_steps))
        # The scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it
        # once per process), and checkpointed through register_for_checkpointing.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.cfg.lr_scheduler_type, warmup, num_training_steps)
        )
        with prints_to_log("deepspeed.prints"):  # DeepSpeed's extension builds and loads, per process
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)
        return self.model

    @property
    def zero3(self) -> bool:
        """Whether parameters are sharded over processes (DeepSpeed ZeRO-3): models loaded while
        this engine exists come up already sharded, and full weights must be gathered."""
        if self.accelerator.distributed_type.name != "DEEPSPEED":
            return False
        zo = self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        return int(zo.get("stage", 0)) == 3

    def prepare_frozen(self, model: torch.nn.Module, shard: bool = False) -> torch.nn.Module:
        """A model that is only run forward (a reference). Under ZeRO-3 it was loaded sharded, so it
        gets its own optimizer-less DeepSpeed engine, whose hooks gather each layer in forward; every
        process must then run its forwards the same number of times. `shard`: the same under ZeRO-1/2
        over several processes (a ZeRO-3 inference engine: each process keeps 1/N of the weights instead
        of a whole replica), for callers whose forwards are already equal per process. Elsewhere: moved
        to the device."""
        model.eval()
        model.requires_grad_(False)
        deepspeed_ = self.accelerator.distributed_type.name == "DEEPSPEED"
        if not (self.zero3 or (shard and deepspeed_ and self.world_size > 1)):
            return model.to(self.device)
        import copy

        import deepspeed

        ds = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        for key in ("optimizer", "scheduler"):
            ds.pop(key, None)
        zo = ds.setdefault("zero_optimization", {})
        zo["stage"] = 3
        for key in ("offload_optimizer", "offload_param"):  # an inference engine has no optimizer to offload
            if key in zo and not self.zero3:
                zo.pop(key)
        wrapped, *_ = deepspeed.initialize(model=model, config=ds)
        wrapped.eval()
        params = list(wrapped.module.parameters())
        here = sum(p.ds_tensor.numel() for p in params)
        log.info(
            "frozen model sharded over %d process(es) (a ZeRO-3 inference engine): %s of its %s parameters here",
            self.world_size,
            f"{here:,}",
            f"{sum(p.ds_numel for p in params):,}",
        )
        return wrapped

    # ---- one optimizer step ------------------------------------------------------------------
    def step(self, micro_batches: list, loss_fn: Callable[[torch.nn.Module, object], LossOut]) -> dict:
        """Runs forward/backward over this process's micro-batches and one optimizer step.

        `micro_batches` must have exactly `self.accumulation` entries on every process. For the
        `sum` reduction the engine needs the step's total unit count before the first backward, so
        `loss_fn` is called per micro-batch and the units are all-reduced up front via
        `count_units` (see `units_in`)."""
        assert len(micro_batches) == self.accumulation, (len(micro_batches), self.accumulation)
        acc = self.accelerator
        t0 = time.perf_counter()
        scale = None
        if self.reduction == "sum":
            local = torch.tensor([float(sum(units_in(b) for b in micro_batches))], device=self.device)
            total_units = acc.reduce(local, reduction="sum").item() if self.world_size > 1 else local.item()
            # backward divides by accumulation steps and DDP/DeepSpeed average over processes
            scale = self.accumulation * self.world_size / max(total_units, 1.0)
        sums: dict[str, float] = {}
        units_seen = 0.0
        tokens_seen = 0
        self.model.train()
        for mb in micro_batches:
            with acc.accumulate(self.model):
                out = loss_fn(self.model, mb)
                loss = out.total * scale if scale is not None else out.total / max(out.units, 1.0)
                acc.backward(loss)
                units_seen += out.units
                tokens_seen += int(
                    mb["input_ids"].numel() if "attention_mask" not in mb else mb["attention_mask"].sum()
                )
                sums["loss"] = sums.get("loss", 0.0) + out.total.detach().float().item()
                for k, v in out.metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                grad_norm = None
                if acc.sync_gradients:
                    grad_norm = self._clip()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        stats = torch.tensor([units_seen, float(tokens_seen)] + list(sums.values()), device=self.device)
        if self.world_size > 1:
            stats = acc.reduce(stats, reduction="sum")
        units_all, tokens_all, *vals = stats.tolist()
        metrics = {k: v / max(units_all, 1.0) for k, v in zip(sums, vals)}
        dt = time.perf_counter() - t0
        metrics.update({"lr": lr, "tokens_per_s": tokens_all / dt, "step_seconds": dt, "units": units_all})
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        return metrics

    def _clip(self) -> float | None:
        acc = self.accelerator
        if acc.distributed_type.name == "DEEPSPEED":
            # DeepSpeed already clipped (config gradient_clipping) and stepped inside backward
            norm = acc.deepspeed_engine_wrapped.get_global_grad_norm()
            return float(norm) if norm is not None else None
        if self.cfg.max_grad_norm and self.cfg.max_grad_norm > 0:
            return float(acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
        norms = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
        return float(torch.stack(norms).norm()) if norms else 0.0

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, step: int, extra: dict | None = None) -> Path:
        """All processes call this. Writes `checkpoints/step_N` atomically; keeps the last K."""
        acc = self.accelerator
        final = self.ckpt_root / f"step_{step}"
        tmp = ckpt.tmp_dir_for(self.ckpt_root, final.name)
        if self.is_main:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if self.is_main:
            state = {"step": step, **(extra or {})}
            atomic_write_json(tmp / "trainer_state.json", state)
            ckpt.commit(tmp, final, {"step": step})
            ckpt.prune(self.ckpt_root, self.cfg.keep_last_checkpoints)
        acc.wait_for_everyone()
        return final

    def resume(self) -> dict | None:
        """Loads the newest intact checkpoint, if any; returns its trainer_state (with `step`)."""
        from accelerate.utils import broadcast_object_list

        found = [ckpt.latest_valid(self.ckpt_root) if self.is_main else None]
        if self.world_size > 1:
            broadcast_object_list(found, from_process=0)
        if found[0] is None:
            return None
        step, path = found[0]
        self.accelerator.load_state(str(path))
        state = json.loads((Path(path) / "trainer_state.json").read_text())
        if self.is_main:
            log.info("resumed from %s (step %d)", path, step)
        return state

    def broadcast(self, value):
        """Process 0's `value` (any picklable object) on every process."""
        if self.world_size == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    # ---- final model -------------------------------------------------------------------------
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def full_state_dict(self) -> dict:
        """Gathers the full weights (ZeRO-3 shards included). All processes must call it."""
        return self.accelerator.get_state_dict(self.model)


def units_in(batch: dict) -> float:
    """Trained units of a micro-batch: its `units` entry if the stage set one (DPO: pairs), else
    the number of labelled tokens."""
    if "units" in batch:
        return float(batch["units"])
    return float((batch["labels"] != -100).sum())
