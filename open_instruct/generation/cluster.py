"""Joining Ray: an existing cluster (`ray start --head` on this or another machine, `RAY_ADDRESS`, a
`ray job submit` driver) or a fresh local Ray, and which GPUs a local Ray may hand to engines."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..logs import adopt
from .config import RolloutConfig


def package_root() -> str:
    return str(Path(__file__).resolve().parents[2])  # the dir holding open_instruct/


def cluster_address(cfg: RolloutConfig) -> str | None:
    """The Ray cluster to join, if any: cfg.ray_address, else $RAY_ADDRESS, else the cluster of
    the last `ray start --head` on this machine. Deliberately not `address="auto"`: on a shared
    machine that joins *any* Ray instance it finds running, e.g. another user's test session."""
    if cfg.ray_address:
        return cfg.ray_address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        from ray._private.services import find_bootstrap_address

        return find_bootstrap_address(None)
    except Exception:  # private API moved: behave as if no cluster was started
        return None


def engine_gpus(visible: list[str], cfg: RolloutConfig) -> list[str] | None:
    """The GPU ids a local Ray may hand to engines: the learner's processes hold the first
    `learner_gpus` (cuda:LOCAL_RANK), so the engines get the rest. None keeps Ray's own view: on CPU,
    with no learner GPU, or when engines share the learner's GPUs (ipc, fractional GPUs)."""
    if cfg.device != "cuda" or cfg.learner_gpus <= 0:
        return None
    if cfg.resolved_transport == "ipc" or (
        cfg.num_gpus_per_engine is not None and cfg.num_gpus_per_engine < 1
    ):
        return None
    rest = visible[cfg.learner_gpus :]
    if not rest:
        raise ConfigError(
            f"rollout: the learner's {cfg.learner_gpus} process(es) hold all {len(visible)} visible GPU(s); "
            f"leave GPUs for the engines, or share them (num_gpus_per_engine < 1, transport ipc)"
        )
    return rest


def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [x.strip() for x in listed.split(",") if x.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def connect_ray(cfg: RolloutConfig) -> str:
    """Joins Ray: an existing session in this process, else `cluster_address`, else a fresh
    local Ray (num_cpus = cfg.ray_num_cpus). Returns which."""
    import ray

    if ray.is_initialized():
        return "existing"
    # engines writing into log files: Ray's own start-up lines go to our log file too, and it streams
    # no worker output to this console (it would be only Ray's, the engines' output is in their files)
    quiet = {"log_to_driver": cfg.log_dir is None}
    if cfg.log_dir is not None:
        adopt("ray")
    address = cluster_address(cfg)
    if address:
        explicit = bool(cfg.ray_address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(address=address, **quiet)
            return address
        except ConnectionError:
            if explicit:
                raise
            # A stale address file from a stopped `ray start`: fall through to a local Ray.
    rest = engine_gpus(visible_gpus(), cfg) if cfg.device == "cuda" else None
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if rest is not None:  # Ray reads the variable when it starts: it sees (and hands out) only these
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(rest)
    try:
        ray.init(address="local", num_cpus=cfg.ray_num_cpus, include_dashboard=False, **quiet)
    finally:
        if rest is not None:  # this process already initialised CUDA; restore for its children
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return "local"
