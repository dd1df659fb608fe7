"""Weight sync learner -> vLLM engine, and the preflight check.

The engine here runs vLLM as it does in production: engine core and worker in spawned processes
(`multiprocess_engine=True`), so weights really cross the RPC boundary (safetensors in /dev/shm)
and the CPU backend's repacked weights are rebuilt by the layerwise reload. Parity: vLLM's
prompt log-probs (fp32) must match the HF learner's within 1e-4 after a sync (measured ~5e-7),
and must NOT match before it.

The NCCL and CUDA IPC transports need GPUs; their CUDA-free logic (plan, rank layout, the
send/receive loop, the handle payload) is tested with a fake wire.
"""

from __future__ import annotations

import collections
import pickle

import pytest
import torch

from open_instruct.errors import UserError
from open_instruct.generation.config import RolloutConfig
from open_instruct.generation.group import RolloutGroup
from open_instruct.generation.transports import (
    broadcast_plan,
    broadcast_tensors,
    ipc_handles,
    named_tensors,
    nccl_rank_offsets,
    serialize_safetensors,
)
from open_instruct.generation.worker_ext import WeightSyncExtension, receive_broadcast
from open_instruct.rl.preflight import PreflightError, compare_logprobs, hf_logprob_fn, preflight_kl

SEQS = [
    [5, 17, 99, 3, 250, 42, 7, 8, 300, 12],
    [40, 41, 42, 43, 44, 45],
    [7, 300, 301, 302, 2, 9, 11, 480, 1, 2, 3, 4],
]


@pytest.fixture(scope="module")
def engine(ray_session, tiny_model_dir):
    cfg = RolloutConfig(
        model=str(tiny_model_dir),
        num_engines=1,
        dtype="float32",
        max_model_len=512,
        kv_cache_gib=0.25,
        multiprocess_engine=True,
        transport="cpu",
        cpu_payload="shm",
    )
    g = RolloutGroup(cfg)
    print(f"\n[weight_sync] engine (spawned vLLM processes) ready in {g.start_seconds:.1f} s")
    yield g
    g.shutdown()


@pytest.fixture
def learner(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _sgd_steps(model, steps=3, lr=1.0):
    """A few real training steps (LM loss on fixed sequences) to move the learner's weights."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ids = torch.tensor([s[:6] for s in SEQS])
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    model.eval()


# ---- CUDA-free pieces -----------------------------------------------------------------------
def test_worker_extension_methods_do_not_clash_with_the_worker():
    from vllm.v1.worker.gpu_worker import Worker

    ours = {n for n in vars(WeightSyncExtension) if not n.startswith("__")}
    assert "update_weights" in dir(Worker)  # why ours are all prefixed oi_
    assert not ours & set(dir(Worker)), ours & set(dir(Worker))


def test_nccl_plan_and_broadcast_loop_roundtrip(tiny_model):
    sd = tiny_model.state_dict()
    items = named_tensors({"module." + k: v for k, v in sd.items()})  # DDP-style prefix stripped
    assert [n for n, _ in items] == list(sd)
    plan = broadcast_plan(items, torch.bfloat16)
    assert [(n, d, s) for n, d, s in plan] == [(k, "bfloat16", list(v.shape)) for k, v in sd.items()]

    wire = collections.deque()  # stands in for PyNcclCommunicator.broadcast from rank 0
    sent = broadcast_tensors(lambda t: wire.append(t.clone()), items, torch.bfloat16)
    received = dict(receive_broadcast(plan, lambda t: t.copy_(wire.popleft()), "cpu"))
    assert not wire and list(received) == list(sd)
    assert sent == sum(v.numel() * 2 for v in sd.values())
    for k, v in sd.items():
        assert received[k].dtype == torch.bfloat16 and torch.equal(received[k], v.to(torch.bfloat16))

    assert nccl_rank_offsets(num_engines=2, tensor_parallel_size=2) == ([1, 3], 5)
    assert nccl_rank_offsets(num_engines=3, tensor_parallel_size=1) == ([1, 2, 3], 4)


def test_ipc_payload_names_every_tensor_under_the_device_uuid(tiny_model):
    items = named_tensors(tiny_model.state_dict())
    payload, keep = ipc_handles(items, "GPU-1234", reduce=lambda t: ("rebuild", (tuple(t.shape),)))
    decoded = pickle.loads(payload)
    assert list(decoded) == ["GPU-1234"]
    assert [(n, args[0]) for n, (_, args) in decoded["GPU-1234"]] == [(n, tuple(t.shape)) for n, t in items]
    assert len(keep) == len(items)


def test_serialize_clones_tied_tensors():
    import safetensors.torch

    w = torch.randn(8, 4)
    payload = serialize_safetensors({"model.embed_tokens.weight": w, "lm_head.weight": w})
    back = safetensors.torch.load(payload)
    assert torch.equal(back["lm_head.weight"], w) and torch.equal(back["model.embed_tokens.weight"], w)


def test_compare_logprobs_only_counts_response_tokens():
    kl, max_abs, mean_abs, n = compare_logprobs([[-1.0, -2.0, -3.0]], [[-5.0, -2.0, -3.5]], starts=[1])
    assert n == 2 and max_abs == pytest.approx(0.5) and mean_abs == pytest.approx(0.25)
    assert kl > 0


# ---- the engine -------------------------------------------------------------------------------
def test_parity_after_sync_and_not_before(engine, learner, logprob_diff):
    start = logprob_diff(learner, engine.score(SEQS), SEQS)
    assert start < 1e-4, f"engine vs checkpoint before training: {start:.3g}"

    _sgd_steps(learner)
    before = logprob_diff(learner, engine.score(SEQS), SEQS)
    assert before > 1e-2, f"trained learner should differ from the stale engine, max diff {before:.3g}"

    stats = [engine.sync_weights(learner.state_dict()) for _ in range(3)]
    after = logprob_diff(learner, engine.score(SEQS), SEQS)
    secs = sorted(s["seconds"] for s in stats)
    print(
        f"\n[weight_sync] cpu/shm sync of {stats[0]['bytes'] / 1e6:.2f} MB: {secs[1]:.3f} s (median of 3, "
        f"worker load {stats[0]['worker_seconds']:.3f} s); parity before sync {before:.3g}, after {after:.3g}"
    )
    assert after < 1e-4, (
        f"vLLM vs HF log-probs after sync: max abs diff {after:.3g} (before sync {before:.3g})"
    )
    assert all(s["transport"] == "cpu" and s["seconds"] > 0 for s in stats)


def test_bytes_payload_syncs_too(engine, learner, logprob_diff):
    _sgd_steps(learner, steps=1, lr=0.5)
    engine.cfg.cpu_payload = "bytes"  # through vLLM's RPC pipe instead of a /dev/shm file
    try:
        out = engine.sync_weights(learner.state_dict())
    finally:
        engine.cfg.cpu_payload = "shm"
    diff = logprob_diff(learner, engine.score(SEQS), SEQS)
    assert diff < 1e-4, f"after sync: max abs diff {diff:.3g}"
    assert out["bytes"] > 0


def test_incomplete_state_dict_is_refused_and_engine_recovers(engine, learner, logprob_diff):
    _sgd_steps(learner, steps=1)
    sd = dict(learner.state_dict())
    sd.pop("lm_head.weight")
    with pytest.raises(RuntimeError, match=r"lm_head\.weight"):
        engine.sync_weights(sd)
    engine.sync_weights(learner.state_dict())
    diff = logprob_diff(learner, engine.score(SEQS), SEQS)
    assert diff < 1e-4, f"after a full re-sync: max abs diff {diff:.3g}"


def test_preflight_passes_matched_and_refuses_other_weights(
    engine, learner, tiny_tokenizer, other_tiny_model_dir
):
    from transformers import AutoModelForCausalLM

    prompts = [
        tiny_tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in ["What is 12 + 34?", "Write a short poem.", "the sum of two", "Please explain"]
    ]
    engine.sync_weights(learner.state_dict())
    report = preflight_kl(engine, hf_logprob_fn(learner), prompts, learner_dtype=torch.float32)
    print(f"\n[preflight] matched: {report.line()} ({report.seconds:.2f} s)")
    assert report.kl < 1e-6 and report.max_abs_diff < 1e-4 and report.num_tokens > 0

    # The engine holds a different random init (as if it loaded another checkpoint).
    other = AutoModelForCausalLM.from_pretrained(other_tiny_model_dir, dtype=torch.float32)
    engine.sync_weights(other.state_dict())
    with pytest.raises(PreflightError) as info:
        preflight_kl(engine, hf_logprob_fn(learner), prompts, learner_dtype=torch.float32)
    msg = str(info.value)
    print(f"[preflight] mismatched: {msg}")
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert "stale or different weights" in msg and "KL" in msg

    # Same weights but a bf16 learner against the fp32 engine, with a strict threshold: the
    # message names the dtype mismatch.
    engine.sync_weights(learner.state_dict())
    with pytest.raises(PreflightError, match=r"dtype mismatch \(engine float32 vs learner bfloat16\)"):
        preflight_kl(
            engine,
            hf_logprob_fn(learner.to(torch.bfloat16)),
            prompts,
            max_kl=1e-9,
            learner_dtype=torch.bfloat16,
        )


def test_olmo2_hf_names_load_into_vllm(ray_session, tiny_olmo2_dir, logprob_diff):
    """OLMo 2 (q/k norms, post-norms) takes HF state-dict names too: every vLLM parameter is
    loaded (sync_weights raises otherwise) and log-probs match after a sync."""
    from transformers import AutoModelForCausalLM

    learner = AutoModelForCausalLM.from_pretrained(tiny_olmo2_dir, dtype=torch.float32).eval()
    _sgd_steps(learner)
    g = RolloutGroup(
        RolloutConfig(
            model=str(tiny_olmo2_dir),
            dtype="float32",
            max_model_len=512,
            kv_cache_gib=0.25,
            multiprocess_engine=False,
        )
    )
    try:
        before = logprob_diff(learner, g.score(SEQS), SEQS)
        g.sync_weights(learner.state_dict())
        after = logprob_diff(learner, g.score(SEQS), SEQS)
    finally:
        g.shutdown()
    assert before > 1e-2 and after < 1e-4, f"OLMo 2 parity: before sync {before:.3g}, after {after:.3g}"
