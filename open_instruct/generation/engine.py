"""One rollout engine: a `vllm.LLM` inside a Ray actor (`RolloutGroup` wraps this class with
`ray.remote`, so the resource request, CPU or GPU, comes from the config).

- The learner tokenises; the engine gets `TokensPrompt`s and never re-tokenises, so the token ids the
  learner trains on are exactly the ids vLLM conditioned on.
- Everything returned is plain Python (lists, floats, dataclasses): cheap to pickle.
- vLLM's CPU engine spawns its engine-core and worker processes, so scripts that create engines
  need an `if __name__ == "__main__":` guard. Numbers measured here: docs/rollouts.md.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RolloutConfig


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


def _token_logprobs(logprobs: Any, token_ids: Sequence[int]) -> list[float]:
    """vLLM's per-position {token: Logprob} (or FlatLogprobs) -> the sampled tokens' log-probs."""
    if logprobs is None:
        return []
    flat = getattr(logprobs, "logprobs", None)
    if isinstance(flat, list) and len(flat) == len(token_ids):  # FlatLogprobs, one entry per position
        return [float(x) for x in flat]
    return [float(logprobs[i][t].logprob) for i, t in enumerate(token_ids)]


class RolloutEngine:
    def __init__(self, cfg: dict, index: int = 0):
        t0 = time.perf_counter()
        self.cfg = RolloutConfig(**cfg)
        if self.cfg.log_dir:  # before vLLM is imported: its start-up logs, and its processes', go there
            from ..logs import redirect_output

            redirect_output(
                Path(self.cfg.log_dir) / f"{self.cfg.log_name}-{index}.log",
                f"engine {index} on {socket.gethostname()}: {self.cfg.model}",
            )
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
        import ray

        return {
            "start_seconds": self.start_seconds,
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "ray_node_id": ray.get_runtime_context().get_node_id(),
        }

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

    # ---- weight sync (see transports.py for the learner side) -------------------------------
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
