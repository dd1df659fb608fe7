"""Rollout engines under Ray: shapes, EOS/length finish reasons, seeds, scoring, restart after
an engine dies (between calls and in the middle of one).

One group of two engines for the whole module. Its engines run vLLM in-process
(`multiprocess_engine=False`): a restart costs ~3 s instead of ~20 s. test_weight_sync.py covers
the spawned-process engine (vLLM's default) with the same code.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from open_instruct.errors import ConfigError
from open_instruct.generation.cluster import cluster_address
from open_instruct.generation.config import RolloutConfig, check_sampling
from open_instruct.generation.group import RolloutGroup, split_evenly

pytestmark = pytest.mark.slow

TEXTS = [
    "What is 12 + 34?",
    "What is 47 + 85?",
    "Write a short story about a river.",
    "the answer is",
    "Please explain the sum step by step.",
    "What is 90 + 10?",
]


@pytest.fixture(scope="module")
def group(ray_session, tiny_model_dir):
    cfg = RolloutConfig(
        model=str(tiny_model_dir),
        num_engines=2,
        dtype="float32",
        max_model_len=512,
        kv_cache_gib=0.25,
        multiprocess_engine=False,
        seed=0,
    )
    g = RolloutGroup(cfg)
    print(
        f"\n[rollout] 2 engines ready in {g.start_seconds:.1f} s "
        f"(per engine {[round(i['start_seconds'], 1) for i in g.engine_info]})"
    )
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    """The learner's HF model for this module: its weights are perturbed away from the
    checkpoint once, so an engine that lost its synced weights is caught by the parity checks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    return [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


# ---- pure helpers (no engines) ------------------------------------------------------------
def test_split_evenly_covers_all_in_order():
    assert split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]


def test_check_sampling_rejects_unknown_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown key 'temprature'"):
        check_sampling({"temprature": 1.0})
    with pytest.raises(ConfigError, match="max_tokens"):
        check_sampling({"max_tokens": "32"})
    with pytest.raises(ConfigError):
        RolloutConfig(model="x", device="cpu", transport="nccl").validate()


def test_rollout_config_loads_strictly_from_yaml_dicts():
    from open_instruct.config import from_dict

    cfg = from_dict(RolloutConfig, {"model": "m", "num_engines": 2, "kv_cache_gib": 1, "transport": "CPU"})
    assert cfg.num_engines == 2 and cfg.kv_cache_gib == 1.0 and cfg.resolved_transport == "cpu"
    assert from_dict(RolloutConfig, {"model": "m", "device": "cuda"}).resolved_transport == "nccl"
    with pytest.raises(ConfigError, match="did you mean 'num_engines'"):
        from_dict(RolloutConfig, {"model": "m", "num_engine": 2}, "rollout")
    with pytest.raises(ConfigError, match=r"rollout.model: required"):
        from_dict(RolloutConfig, {"num_engines": 2}, "rollout")


def test_cluster_address_order(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address(RolloutConfig(model="m", ray_address="10.0.0.2:6379")) == "10.0.0.2:6379"
    assert cluster_address(RolloutConfig(model="m")) == "10.0.0.1:6379"


# ---- engines ------------------------------------------------------------------------------
def test_generate_returns_n_samples_per_prompt_with_logprobs(group, prompts, tiny_tokenizer):
    gen = group.generate(prompts, {"n": 3, "max_tokens": 24, "temperature": 1.0, "seed": 1})
    assert len(gen.completions) == len(prompts)
    assert all(len(samples) == 3 for samples in gen.completions)
    eos = tiny_tokenizer.eos_token_id
    for samples in gen.completions:
        for c in samples:
            assert 1 <= len(c.token_ids) <= 24
            assert len(c.logprobs) == len(c.token_ids)
            assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
            assert all(0 <= t < len(tiny_tokenizer) for t in c.token_ids)
            assert isinstance(tiny_tokenizer.decode(c.token_ids), str)
            if c.finish_reason == "length":
                assert len(c.token_ids) == 24
            else:
                assert c.finish_reason == "stop" and c.token_ids[-1] == eos
    assert gen.num_tokens == sum(len(c.token_ids) for s in gen.completions for c in s)
    assert gen.seconds > 0 and gen.tokens_per_second > 0
    print(
        f"\n[rollout] {gen.num_tokens} tokens in {gen.seconds:.2f} s = {gen.tokens_per_second:.0f} tokens/s"
    )


def test_finish_reasons_eos_and_length(group, prompts, tiny_tokenizer):
    # A random tiny model puts ~1/vocab mass on EOS: over 192 samples of up to 64 tokens some end
    # at EOS and some hit the length limit.
    gen = group.generate(prompts * 8, {"n": 4, "max_tokens": 64, "temperature": 1.0, "seed": 2})
    flat = [c for s in gen.completions for c in s]
    stopped = [c for c in flat if c.stopped]
    cut = [c for c in flat if c.finish_reason == "length"]
    assert stopped and cut, (len(stopped), len(cut))
    assert all(c.token_ids[-1] == tiny_tokenizer.eos_token_id for c in stopped)
    assert all(tiny_tokenizer.eos_token_id not in c.token_ids for c in cut)
    assert all(len(c.token_ids) == 64 for c in cut)


def test_stop_strings_end_generation(group, prompts, tiny_tokenizer):
    gen = group.generate(prompts, {"n": 2, "max_tokens": 48, "seed": 5, "stop": ["e"]})
    flat = [c for s in gen.completions for c in s]
    assert any(c.stopped for c in flat)
    for c in flat:
        assert c.text is not None and "e" not in c.text
        if c.stopped and c.token_ids[-1] != tiny_tokenizer.eos_token_id:
            assert "e" in tiny_tokenizer.decode(
                c.token_ids
            )  # the token that completed the stop string is kept


def test_seeded_sampling_is_deterministic_and_independent_of_engine_split(group, prompts):
    sampling = {"n": 2, "max_tokens": 16, "temperature": 1.0, "seed": 7}
    a = group.generate(prompts, sampling)
    b = group.generate(prompts, sampling)
    assert a.completions == b.completions
    # 3 prompts split 2/1 over the engines instead of 6 split 3/3: prompt i keeps its seed.
    c = group.generate(prompts[:3], sampling)
    assert c.completions == a.completions[:3]
    # Different prompts never share a random stream, and another seed gives other samples.
    d = group.generate(prompts, {**sampling, "seed": 8})
    assert d.completions != a.completions
    assert a.completions[0][0].token_ids != a.completions[1][0].token_ids


def test_greedy_equals_hf_greedy(group, prompts, learner):
    group.sync_weights(learner.state_dict())
    gen = group.generate(prompts[:2], {"n": 1, "max_tokens": 8, "temperature": 0.0, "ignore_eos": True})
    for p, samples in zip(prompts[:2], gen.completions):
        with torch.no_grad():
            out = learner.generate(
                torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert samples[0].token_ids == out[0, len(p) :].tolist()


def test_score_matches_hf_logprobs(group, prompts, learner, logprob_diff):
    group.sync_weights(learner.state_dict())
    seqs = [p + [5, 6, 7, 8, 9] for p in prompts]
    scored = group.score(seqs)
    assert [len(r) for r in scored] == [len(s) - 1 for s in seqs]
    diff = logprob_diff(learner, scored, seqs)
    assert diff < 1e-4, f"engine vs HF log-probs max abs diff {diff:.3g}"


def test_engine_killed_between_calls_is_restarted_with_synced_weights(group, prompts, learner, logprob_diff):
    group.sync_weights(learner.state_dict())
    seqs = [p + [11, 12, 13] for p in prompts]
    assert logprob_diff(learner, group.score(seqs), seqs) < 1e-4

    import ray

    dead = group.engines[0]
    ray.kill(dead)
    restarts = group.restarts
    t0 = time.perf_counter()
    gen = group.generate(prompts, {"n": 2, "max_tokens": 16, "seed": 3})
    print(f"\n[rollout] generate with a restart took {time.perf_counter() - t0:.1f} s")
    assert gen.restarts == 1 and group.restarts == restarts + 1
    assert group.engines[0] is not dead
    assert len(gen.completions) == len(prompts) and all(len(s) == 2 for s in gen.completions)
    # Engine 0 scores the first half: it must hold the synced (perturbed) weights, not the
    # checkpoint it was restarted from.
    diff = logprob_diff(learner, group.score(seqs), seqs)
    assert diff < 1e-4, f"restarted engine vs learner max abs diff {diff:.3g}"


def test_engine_killed_during_a_call_requeues_its_prompts(group, prompts, learner, logprob_diff):
    import ray

    group.sync_weights(learner.state_dict())
    sampling = {"n": 4, "max_tokens": 96, "ignore_eos": True, "seed": 4}
    reference = group.generate(prompts * 2, sampling)
    victim = group.engines[1]
    killer = threading.Timer(0.3, lambda: ray.kill(victim))
    killer.start()
    gen = group.generate(prompts * 2, sampling)
    killer.join()
    print(f"\n[rollout] kill landed {'inside' if gen.restarts else 'after'} the call ({gen.seconds:.1f} s)")
    if gen.restarts == 0:  # the call beat the timer; the next one meets the dead engine
        gen = group.generate(prompts * 2, sampling)
    assert gen.restarts == 1
    assert gen.completions == reference.completions  # complete, in order, same seeded samples
    assert all(len(c.token_ids) == 96 for s in gen.completions for c in s)
    seqs = [p + [21, 22] for p in prompts]
    assert logprob_diff(learner, group.score(seqs), seqs) < 1e-4
