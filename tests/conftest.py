"""Shared fixtures: tiny offline models built once per session, isolated caches, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the hub: fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPEN_INSTRUCT_NO_PROGRESS", "1")  # progress bars are noise in test logs
# A small KV cache per vLLM engine: these machines have 2 cores and engineers share them.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_open_instruct_cache(tmp_path_factory):
    """Tokenised-data caches go to a per-session temp dir, not ~/.cache (tests stay independent)."""
    old = os.environ.get("OPEN_INSTRUCT_CACHE")
    os.environ["OPEN_INSTRUCT_CACHE"] = str(tmp_path_factory.mktemp("open_instruct_cache"))
    yield
    if old is None:
        os.environ.pop("OPEN_INSTRUCT_CACHE", None)
    else:
        os.environ["OPEN_INSTRUCT_CACHE"] = old


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """data_mixes/samples (the toy task; regenerate with scripts/make_samples.py)."""
    return REPO / "data_mixes" / "samples"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 128, 4 layers, vocab 512) + tulu tokenizer, built once (~4 s).
    Treat it as read-only; copy it (shutil.copytree) before writing into it."""
    from open_instruct.model.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_llama") / "model", arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_olmo2_dir(tmp_path_factory) -> Path:
    """A tiny random OLMo 2 whose tulu template puts the BOS in front (as OLMo 2 Instruct)."""
    from open_instruct.model.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_olmo2") / "model", arch="olmo2", seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """The tiny Llama's tokenizer (session-wide: do not mutate; load your own to change it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def tiny_model(tiny_model_dir):
    """A fresh fp32 copy of the tiny Llama per test (loading takes ~0.1 s), in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each in-process training run starts clean."""
    import sys

    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    yield


@pytest.fixture(scope="session")
def sft_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama after SFT on the toy task (250 steps x 64 examples, ~1 min on an idle
    machine): answers a fair share of held-out problems, the start for DPO and RLVR learning tests."""
    from open_instruct.config import from_dict
    from open_instruct.train.sft import SFTConfig, run_sft

    out = tmp_path_factory.mktemp("sft") / "model"
    cfg = from_dict(
        SFTConfig,
        dict(
            model_name_or_path=str(tiny_model_dir),
            dataset_mix=str(REPO / "data_mixes/tiny_sft.yaml"),
            output_dir=str(out),
            per_device_train_batch_size=64,
            learning_rate=3e-3,
            max_train_steps=250,
            num_train_epochs=3,
            warmup_ratio=0.03,
            packing=True,
            max_seq_length=128,
            seed=0,
        ),
    )
    run_sft(cfg)
    return out


@pytest.fixture(scope="session")
def ppo_one_process(sft_model_dir, tmp_path_factory) -> Path:
    """A small PPO run (value model, KL reference) trained uninterrupted in one process: what a killed
    and rerun RLVR run must end with (tests/rl/ppo_run.py)."""
    from tests.rl.ppo_run import run_one_process

    return run_one_process(tmp_path_factory.mktemp("ppo_one"), sft_model_dir)


# ---- Ray and vLLM: Ray and engines are slow to start (Ray ~3 s, a vLLM CPU engine ~2-20 s), so each
# module starts Ray once (`ray_session`) and its engines once (module-scoped fixtures in the module).


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
