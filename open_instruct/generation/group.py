"""Rollouts: N vLLM engines as Ray actors, driven from the learner process.

    group = RolloutGroup(rollout_config("runs/x/dpo", seed=0, max_model_len=1024, options={"num_engines": 2}))
    gen = group.generate(prompt_token_ids, {"temperature": 1.0, "max_tokens": 512, "n": 8, "seed": 1})
    gen.completions[i][j].token_ids / .logprobs / .finish_reason     # prompt i, sample j
    ... learner step ...
    group.sync_weights(policy.model.state_dict())                      # every engine, timed
    group.shutdown()

- A batch is split into contiguous shards, one per engine, and gathered back in order. With a
  `seed`, prompt i gets seed `seed + i * n` (vLLM seeds its n samples `s, s+1, ...`): results do
  not depend on how many engines there are or which one ran a prompt, and two prompts never share
  a random stream (a shared stream makes samples of different prompts correlated).
- An engine whose actor dies (`RayActorError`: killed, OOM, node lost) is restarted from the same
  model path, gets the latest synced weights again (the transport's `catch_up`), and the shard it
  was running is re-run; the call returns complete results. Up to `max_restarts` per call.
- An engine actor runs one call at a time, in submission order: a `sync_weights` issued while a
  `generate` is in flight (one-step off-policy overlap) waits for it, so weights never change in
  the middle of a generation, and the next generation sees the new weights.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..logs import engine_log_dir
from .cluster import connect_ray, package_root
from .config import RolloutConfig, check_sampling
from .engine import Completion, Generation, RolloutEngine
from .transports import TRANSPORTS


def split_evenly(num_items: int, num_parts: int) -> list[tuple[int, int]]:
    """[start, end) of `num_parts` contiguous shards whose sizes differ by at most one."""
    base, extra = divmod(num_items, num_parts)
    bounds, start = [], 0
    for i in range(num_parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def _is_engine_death(exc: BaseException) -> bool:
    import ray

    if isinstance(exc, ray.exceptions.RayActorError):
        return True
    # The actor lives but its vLLM engine-core process died: just as unusable.
    return isinstance(exc, ray.exceptions.RayTaskError) and "EngineDeadError" in str(type(exc.cause))


class RolloutGroup:
    """N engine actors; splits batches over them, syncs weights to all, restarts dead ones."""

    def __init__(self, cfg: RolloutConfig):
        import ray

        from ..model.lora import full_weights_dir

        cfg.validate("rollout")
        # vLLM loads full weights: a LoRA stage's dir serves its merged/ (written on first need)
        cfg = dataclasses.replace(cfg, model=full_weights_dir(cfg.model))
        if cfg.log_dir is None:  # the command's logs/ dir (None with -v: Ray's console)
            cfg = dataclasses.replace(cfg, log_dir=engine_log_dir())
        self.cfg = cfg
        self.ray_mode = connect_ray(cfg)
        self._actor_cls = ray.remote(RolloutEngine)
        self.transport = TRANSPORTS[cfg.resolved_transport](self)
        self.restarts = 0
        self._restart_lock = threading.Lock()
        self.last_sync: dict | None = None
        t0 = time.perf_counter()
        self.engines = [self._start_engine(i) for i in range(cfg.num_engines)]
        self.engine_info = ray.get([e.ready.remote() for e in self.engines])
        self.start_seconds = time.perf_counter() - t0

    # ---- engines -------------------------------------------------------------------------------
    def _actor_options(self) -> dict:
        cfg = self.cfg
        env = {"PYTHONPATH": os.pathsep.join(p for p in (package_root(), os.environ.get("PYTHONPATH")) if p)}
        for key, value in os.environ.items():
            # engines run on any node of the Ray cluster, whose processes did not inherit our environment
            if key in (
                "VLLM_CPU_KVCACHE_SPACE",
                "VLLM_CPU_OMP_THREADS_BIND",
                "VLLM_LOGGING_LEVEL",
            ) or key.startswith("OPEN_INSTRUCT_"):
                env[key] = value
        if not cfg.multiprocess_engine:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_engine, "runtime_env": {"env_vars": env}}
        if cfg.resources:
            opts["resources"] = dict(cfg.resources)  # custom Ray resources: place engines on chosen nodes
        if cfg.device == "cuda":
            opts["num_gpus"] = (
                cfg.num_gpus_per_engine if cfg.num_gpus_per_engine is not None else cfg.tensor_parallel_size
            )
        else:
            opts["num_gpus"] = 0  # never ask Ray for a GPU on the CPU path
        return opts

    def _start_engine(self, index: int):
        return self._actor_cls.options(**self._actor_options()).remote(dataclasses.asdict(self.cfg), index)

    def _restart_engine(self, index: int) -> None:
        """Replaces engine `index` with a fresh actor from the same model path and lets the transport
        queue the latest weights on it (Ray runs an actor's calls in submission order, so anything
        queued after this sees the synced weights)."""
        import ray

        try:
            ray.kill(self.engines[index], no_restart=True)
        except Exception:  # already gone
            pass
        engine = self._start_engine(index)
        self.engines[index] = engine
        self.restarts += 1
        self.transport.catch_up(engine)

    def run_on_engines(self, method: str, per_engine_args: list[tuple | None]) -> tuple[list[Any], int]:
        """Calls `method` on each engine that has args (None = nothing for that engine), in
        parallel; an engine that dies is restarted and its call re-run. Returns the results in
        engine order and the number of restarts."""
        import ray

        results: list[Any] = [None] * len(per_engine_args)
        pending: dict[Any, tuple[int, Any]] = {}  # ref -> (engine index, the handle it ran on)

        def submit(i: int) -> None:
            handle = self.engines[i]
            pending[getattr(handle, method).remote(*per_engine_args[i])] = (i, handle)

        for i, args in enumerate(per_engine_args):
            if args is not None:
                submit(i)
        restarts = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i, handle = pending.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except Exception as exc:
                if not _is_engine_death(exc):
                    raise
                if restarts >= self.cfg.max_restarts:
                    raise RuntimeError(
                        f"rollout engine {i} died {restarts + 1} times in one call "
                        f"(max_restarts={self.cfg.max_restarts}): {exc}"
                    ) from exc
                restarts += 1
                with self._restart_lock:
                    # Another thread (e.g. a sync while a generate is in flight) may already
                    # have replaced this engine.
                    if self.engines[i] is handle:
                        self._restart_engine(i)
                submit(i)
        return results, restarts

    # ---- rollouts ------------------------------------------------------------------------------
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: Mapping[str, Any]) -> Generation:
        sampling = check_sampling(sampling)
        prompts = [list(map(int, p)) for p in prompt_token_ids]
        n = sampling.get("n", 1)
        seed = sampling.pop("seed", None)
        t0 = time.perf_counter()
        shards = split_evenly(len(prompts), len(self.engines))
        args: list[tuple | None] = []
        for start, end in shards:
            if start == end:
                args.append(None)
                continue
            seeds = None if seed is None else [seed + i * n for i in range(start, end)]
            args.append((prompts[start:end], sampling, seeds))
        results, restarts = self.run_on_engines("generate", args)
        completions: list[list[Completion]] = []
        for res in results:
            if res is not None:
                completions.extend(res[0])
        seconds = time.perf_counter() - t0
        num_tokens = sum(len(c.token_ids) for per_prompt in completions for c in per_prompt)
        return Generation(completions, num_tokens, seconds, restarts)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Per-token log-probs (tokens 1..T-1 of each sequence) under the engines' weights."""
        seqs = [list(map(int, s)) for s in sequences]
        args = [None if a == b else (seqs[a:b],) for a, b in split_evenly(len(seqs), len(self.engines))]
        results, _ = self.run_on_engines("score", args)
        return [row for res in results if res is not None for row in res]

    # ---- weight sync ---------------------------------------------------------------------------
    def sync_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict:
        """Pushes the learner's weights (HF names, e.g. `model.state_dict()`) to every engine and
        returns {"seconds", "transport", "bytes"?, ...}. See transports.py."""
        self.last_sync = self.transport.send(weights)
        return self.last_sync

    def shutdown(self) -> None:
        import ray

        self.transport.close()
        refs = [e.shutdown.remote() for e in self.engines]
        try:
            ray.wait(refs, num_returns=len(refs), timeout=30)
        except Exception:
            pass
        for e in self.engines:
            try:
                ray.kill(e, no_restart=True)
            except Exception:
                pass
        self.engines = []
