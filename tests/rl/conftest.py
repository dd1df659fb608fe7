"""Fixtures for the rollout / weight-sync tests: one Ray session per test module.

Ray and vLLM engines are slow to start (Ray ~3 s, a vLLM CPU engine ~2-20 s), so each module
starts Ray once (`ray_session`) and its engines once (module-scoped fixtures in the module).
The tiny models come from tests/conftest.py (open_instruct.model.tiny.build_tiny).
"""

from __future__ import annotations

import os

import pytest

# A small KV cache per engine: these machines have 2 cores and engineers share them.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="module")
def ray_session():
    """Ray for this module only (`ray.init(num_cpus=2)`), shut down when the module ends."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory):
    """The same tiny Llama architecture and tokenizer, different random weights (seed 1)."""
    from open_instruct.model.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_llama_seed1") / "model", arch="llama", seed=1)


@pytest.fixture(scope="session")
def logprob_diff():
    """max |HF log-prob - engine log-prob| over tokens 1..T-1 of `sequences`."""
    from open_instruct.rl.preflight import hf_logprob_fn

    def diff(model, engine_logprobs, sequences) -> float:
        hf = hf_logprob_fn(model)(sequences)
        assert [len(r) for r in hf] == [len(r) for r in engine_logprobs]
        return max(abs(x - y) for rh, re in zip(hf, engine_logprobs) for x, y in zip(rh, re))

    return diff
