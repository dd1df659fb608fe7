"""How rollout engines are configured (`RolloutConfig`) and sampled (`check_sampling`): plain data,
no vLLM or Ray imports, so configs validate in milliseconds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    resources: dict = field(default_factory=dict)  # custom Ray resources per engine, e.g. {"rollout_node": 1}
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
    # GPUs of this node the learner holds (the RLVR stage sets it); a local Ray leaves them out
    learner_gpus: int = 0
    worker_extension_cls: str = "open_instruct.generation.worker_ext.WeightSyncExtension"
    engine_kwargs: dict = field(default_factory=dict)  # passed through to vllm.LLM
    # engine i's stdout/stderr (vLLM's and Ray's start-up logs) go to <log_dir>/<log_name>-<i>.log, on
    # the node it runs on (a shared filesystem in a cluster). None: the command's logs/ dir (RolloutGroup
    # fills it in); with -v, or without the CLI, Ray streams them to the console.
    log_dir: str | None = None
    log_name: str = "engine"

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
        if self.max_model_len < 2:
            raise ConfigError(f"{where}.max_model_len: must be >= 2, got {self.max_model_len}")

    @property
    def resolved_transport(self) -> str:
        if self.transport != "auto":
            return self.transport
        return "cpu" if self.device == "cpu" else "nccl"


def engine_dtype(learner_dtype: str, device: str) -> str:
    """The vLLM dtype for a stage's `dtype`: float32 on CPU engines (the vllm-cpu build dies with an
    illegal instruction on bfloat16 on these machines, and fp32 keeps its log-probs equal to the
    learner's); on GPU the learner's dtype, bfloat16 for auto."""
    if device == "cpu":
        return "float32"
    return "bfloat16" if learner_dtype == "auto" else learner_dtype


def rollout_config(
    model: str,
    *,
    seed: int,
    max_model_len: int,
    learner_dtype: str = "float32",
    options: Mapping[str, Any] | None = None,
    where: str = "rollout",
    **derived: Any,
) -> RolloutConfig:
    """The one way every caller (RLVR, held-out eval, policy pairs, `eval`) builds its engines' config:
    derived values first, then the user's `rollout:` options (which win), then the model."""
    from ..config import from_dict

    options = dict(options or {})
    data = {
        "seed": seed,
        "max_model_len": max_model_len,
        "dtype": engine_dtype(learner_dtype, options.get("device", "cpu")),
        # engine logs named after the caller: eval-engine-0.log, policy_pairs-engine-0.log
        "log_name": f"{where.split('.')[0]}-engine" if "." in where else "engine",
        **derived,
        **options,
        "model": model,
    }
    return from_dict(RolloutConfig, data, where)


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
    if out.get("temperature", 1.0) < 0:
        raise ConfigError(f"{where}.temperature: must be >= 0, got {out['temperature']}")
    if "top_p" in out and not 0 < out["top_p"] <= 1:
        raise ConfigError(f"{where}.top_p: must be in (0, 1], got {out['top_p']}")
    return out
