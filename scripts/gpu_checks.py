"""The checks of scripts/gpu_check.py, one per process: `python scripts/gpu_checks.py CHECK --work DIR
--device cuda|cpu` runs CHECK on the tiny model in DIR/tiny and writes DIR/CHECK.json ({status, detail}).
What each covers:

- attention  the implementation the GPU profile selects (flash_attention_2 when flash_attn imports,
             else sdpa) in bf16: packed rows give the padded rows' log-probs, and without restarted
             positions they would not (the check can tell a leak)
- sft        train.sft.run_sft, bf16, packed rows, that attention: the loss falls, the model is published
- dpo        train.dpo.run_dpo, bf16, cached reference: first-step loss = ln 2 (policy = reference)
- ipc        the CUDA IPC weight-sync payload (transports.ipc_handles) opened in a second process on
             the same GPU: every tensor bit-exact, and the memory is shared (no copy)
- nccl       the learner end of the NCCL weight sync on one GPU: NcclBroadcaster.send -> a one-rank
             NCCL communicator (vLLM's NCCL library) broadcasting out of place -> worker_ext.receive_broadcast
             allocating from the plan; GPU bf16 weights and CPU fp32 ones (ZeRO-3 gathers to CPU), bit-exact;
             plus worker_ext.stateless_nccl's rendezvous at world size 1. NCCL refuses two ranks on one
             GPU, so a learner <-> engine group with real peer traffic needs two GPUs: not covered here.
- rlvr       rl.rlvr.run_rlvr: 2 GRPO steps with one vLLM engine on the same GPU (rollout device cuda,
             transport ipc, as one GPU allows), including the learner/engine log-prob preflight
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import traceback
from pathlib import Path

CHECKS = ("attention", "sft", "dpo", "ipc", "nccl", "rlvr")
BUDGET_S = {"attention": 45, "sft": 90, "dpo": 90, "ipc": 45, "nccl": 60, "rlvr": 210}  # seconds
NEEDS = {"nccl": ("vllm",), "rlvr": ("vllm", "ray")}  # packages beyond torch + transformers
CPU_CHECKS = ("attention", "sft", "dpo")  # what `--device cpu` runs


class CheckFailed(Exception):
    """A check ran and found something wrong (the message is the FAIL line's reason)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one check of scripts/gpu_check.py")
    p.add_argument("check", nargs="?", choices=CHECKS)
    p.add_argument("--work", help="the run's work dir (holds tiny/)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--ipc-receiver", nargs=3, metavar=("PAYLOAD", "OUT", "UUID"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ipc_receiver:
        return ipc_receiver(*args.ipc_receiver)
    if not args.check or not args.work:
        p.error("give a check and --work")
    return run_child(args.check, Path(args.work), args.device)


def run_child(name: str, work: Path, device_name: str) -> int:
    import torch

    device = torch.device("cuda", 0) if device_name == "cuda" else torch.device("cpu")
    try:
        status, detail = "PASS", CHECK_FNS[name](work, device)
    except CheckFailed as e:
        status, detail = "FAIL", str(e)
    except Exception as e:  # noqa: BLE001 - any error is this check's failure, reported in one line
        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        status, detail = "FAIL", f"{type(e).__name__}: {first}"[:300]
    (work / f"{name}.json").write_text(json.dumps({"status": status, "detail": detail}))
    return 0


def samples() -> Path:
    from open_instruct.shipped import shipped_root

    return shipped_root() / "data_mixes" / "samples"


def attention_for(device) -> tuple[str, str]:
    """What the GPU profile's recipes use: flash_attention_2 where flash_attn imports, else sdpa."""
    if device.type != "cuda":
        return "sdpa", "CPU"
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "flash_attn not installed"
    try:
        import flash_attn
    except Exception as e:  # noqa: BLE001 - reported by the attention check
        return "sdpa", f"flash_attn installed but does not import: {type(e).__name__}: {e}"
    return "flash_attention_2", f"flash_attn {flash_attn.__version__}"


def peak_memory(device) -> str:
    import torch

    if device.type != "cuda":
        return "cpu"
    return f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB on {torch.cuda.get_device_name(device)}"


def check_attention(work: Path, device) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from open_instruct.data.collate import pack_collate, pad_collate
    from open_instruct.data.tokenize import sft_example

    attn, why = attention_for(device)
    if "does not import" in why:
        raise CheckFailed(why[:300])
    model_dir = work / "tiny"
    tok = AutoTokenizer.from_pretrained(model_dir)
    lines = (samples() / "sft_eval.jsonl").read_text().splitlines()[:8]
    examples = [sft_example(tok, json.loads(x)["messages"], 512) for x in lines]
    examples[2] = {k: v[:20] for k, v in examples[2].items()}  # unequal lengths

    def per_sequence(model, batch) -> torch.Tensor:
        kwargs = {
            k: batch[k].to(device) for k in ("input_ids", "position_ids", "attention_mask") if k in batch
        }
        with torch.no_grad():
            logits = model(**kwargs, use_cache=False).logits.float().cpu()
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        logp = torch.log_softmax(logits[:, :-1], -1)
        tok_lp = torch.gather(logp, -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out = torch.zeros(batch["num_sequences"], dtype=torch.float64)
        return out.scatter_add_(0, batch["seq_index"][:, 1:][mask], tok_lp[mask].double())

    # loaded straight onto the device: flash_attention_2 wants the model on the GPU from the start
    load = dict(device_map=str(device))
    ref_model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", **load
    ).eval()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation=attn, **load
    ).eval()
    padded = pad_collate(examples, tok.pad_token_id)
    packed = pack_collate(examples, pad_token_id=tok.pad_token_id)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
    ref = per_sequence(ref_model, padded)

    def rel(x: torch.Tensor) -> float:
        return float(((x - ref).abs() / ref.abs()).max())

    err_padded, err_packed, err_leak = (rel(per_sequence(model, b)) for b in (padded, packed, leaky))
    tol = 2e-3  # bf16 vs an fp32 eager reference; measured ~5e-5 on CPU (sdpa), a leak ~9e-3
    if err_padded > tol or err_packed > tol:
        raise CheckFailed(
            f"{attn} bf16 log-probs differ from fp32 eager: padded rows {err_padded:.1e}, packed rows "
            f"{err_packed:.1e} (relative, tolerance {tol:.0e})"
        )
    if err_leak <= 2 * tol:
        raise CheckFailed(
            f"packed rows without restarted positions match too ({err_leak:.1e}): the check has no teeth"
        )
    return (
        f"{attn} ({why}), bf16: padded {err_padded:.0e} and packed {err_packed:.0e} from fp32 eager "
        f"(a leak between packed sequences: {err_leak:.0e})"
    )


def _losses(out: Path) -> list[float]:
    from open_instruct.track import read_metrics

    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def _published(out: Path) -> str:
    """Checks the stage published an intact bf16 model; returns its digest."""
    from safetensors import safe_open

    from open_instruct.train.checkpoint import verify_model

    digest = verify_model(out)
    if digest is None:
        raise CheckFailed(f"no intact published model in {out}")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    if dtypes != {"BF16"}:
        raise CheckFailed(f"published weights are {sorted(dtypes)}, expected BF16 (dtype: bfloat16)")
    return digest


def check_sft(work: Path, device) -> str:
    from open_instruct.config import from_dict
    from open_instruct.train.sft import SFTConfig, run_sft

    attn, _ = attention_for(device)
    out = work / "sft"
    steps = 8
    cfg = from_dict(
        SFTConfig,
        dict(
            model_name_or_path=str(work / "tiny"),
            dataset_mix=str(samples() / "sft_eval.jsonl"),
            output_dir=str(out),
            dtype="bfloat16",
            attn_implementation=attn,
            packing=True,
            max_seq_length=128,
            per_device_train_batch_size=16,
            gradient_accumulation_steps=1,
            learning_rate=3e-3,
            warmup_ratio=0.0,
            max_train_steps=steps,
            seed=0,
        ),
        "gpu_check.sft",
    )
    run_sft(cfg)
    losses = _losses(out)
    if len(losses) != steps or not all(math.isfinite(x) for x in losses):
        raise CheckFailed(f"expected {steps} finite losses in metrics.jsonl, got {losses}")
    if not losses[-1] < losses[0]:
        raise CheckFailed(f"the loss did not fall in {steps} steps: {losses[0]:.3f} -> {losses[-1]:.3f}")
    _published(out)
    return f"{steps} steps, {attn}, packed, loss {losses[0]:.2f} -> {losses[-1]:.2f}, {peak_memory(device)}"


def check_dpo(work: Path, device) -> str:
    from open_instruct.config import from_dict
    from open_instruct.train.dpo import DPOConfig, run_dpo

    attn, _ = attention_for(device)
    out = work / "dpo"
    steps = 4
    cfg = from_dict(
        DPOConfig,
        dict(
            model_name_or_path=str(work / "tiny"),
            dataset_mix=str(samples() / "preference_eval.jsonl"),
            output_dir=str(out),
            dtype="bfloat16",
            attn_implementation=attn,
            loss_type="dpo",
            beta=0.1,
            per_device_train_batch_size=8,
            total_batch_size=8,
            max_seq_length=128,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            max_train_steps=steps,
            seed=0,
        ),
        "gpu_check.dpo",
    )
    run_dpo(cfg)
    losses = _losses(out)
    if len(losses) != steps or not all(math.isfinite(x) for x in losses):
        raise CheckFailed(f"expected {steps} finite losses in metrics.jsonl, got {losses}")
    # step 1 runs the starting weights, which are the reference: every margin is 0, the loss ln 2
    if abs(losses[0] - math.log(2)) > 0.02:
        raise CheckFailed(
            f"first-step DPO loss {losses[0]:.4f}, expected ln 2 = 0.6931 (policy = cached reference)"
        )
    _published(out)
    return f"{steps} steps, {attn}, cached reference, loss {losses[0]:.4f} (ln 2) -> {losses[-1]:.4f}, {peak_memory(device)}"


def _tiny_weights(work: Path, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    from open_instruct.generation.transports import named_tensors

    model = AutoModelForCausalLM.from_pretrained(work / "tiny", dtype=getattr(torch, dtype))
    return named_tensors(model.to(device).state_dict())


def check_ipc(work: Path, device) -> str:
    import torch
    from safetensors.torch import load_file

    from open_instruct.generation.transports import ipc_handles

    items = _tiny_weights(work, device, "bfloat16")
    sentinel = torch.zeros(16, dtype=torch.float32, device=device)  # the receiver writes 7s into it
    items = [*items, ("gpu_check.sentinel", sentinel)]
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    payload, keep = ipc_handles(items, uuid)
    torch.cuda.synchronize(device)
    (work / "ipc.pkl").write_bytes(payload)
    got = work / "ipc_received.safetensors"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--ipc-receiver",
        str(work / "ipc.pkl"),
        str(got),
        uuid,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUDGET_S["ipc"] - 10)
    print(res.stdout, res.stderr, flush=True)
    if res.returncode != 0:
        raise CheckFailed(f"the receiving process failed: {last_stderr(res.stderr)}")
    received = load_file(got)
    bad = [n for n, t in items[:-1] if not torch.equal(received[n], t.detach().cpu())]
    if bad or set(received) != {n for n, _ in items}:
        raise CheckFailed(f"{len(bad)} tensor(s) differ after the IPC round trip, e.g. {bad[:3]}")
    torch.cuda.synchronize(device)
    if not bool((sentinel == 7).all()):
        raise CheckFailed(
            "the receiver's write did not reach the sender's tensor: the handles were copied, not shared"
        )
    del keep
    nbytes = sum(t.numel() * t.element_size() for _, t in items)
    return (
        f"{len(items) - 1} bf16 tensors ({nbytes / 2**20:.1f} MiB, payload {len(payload)} bytes) opened in a second "
        f"process on the same GPU: bit-exact, memory shared"
    )


def last_stderr(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return (lines[-1] if lines else "(no output)")[:200]


def ipc_receiver(payload_path: str, out_path: str, uuid: str) -> int:
    """The engine's end of the IPC transport, as worker_ext.oi_load_ipc opens it: look up this GPU's
    uuid, rebuild each tensor on the current device, then copy to CPU for the comparison."""
    import pickle

    import torch
    from safetensors.torch import save_file

    by_uuid = pickle.loads(Path(payload_path).read_bytes())
    mine = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    if mine != uuid or mine not in by_uuid:
        print(f"this process's GPU {mine} is not the sender's {uuid}", file=sys.stderr)
        return 1
    device_index = torch.cuda.current_device()
    out = {}
    for name, (rebuild, args) in by_uuid[mine]:
        args = list(args)
        args[6] = device_index
        t = rebuild(*args)
        if name == "gpu_check.sentinel":
            t.fill_(7.0)
        out[name] = t.detach().cpu().clone()
    torch.cuda.synchronize()
    save_file(out, out_path)
    return 0


class LoopbackComm:
    """Stands in for the learner <-> engine communicator on one GPU: each `broadcast` from the learner
    is a real ncclBroadcast on a one-rank NCCL communicator, out of place, into the tensor
    worker_ext.receive_broadcast allocated from the plan (what an engine worker would receive)."""

    def __init__(self, plan, device):
        import torch
        from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary

        from open_instruct.generation.worker_ext import receive_broadcast

        self.lib = NCCLLibrary()
        self.version = self.lib.ncclGetVersion()
        torch.cuda.set_device(device)
        self.comm = self.lib.ncclCommInitRank(1, self.lib.ncclGetUniqueId(), 0)
        self.pending = None
        self.plan = plan
        self.received = []
        self.incoming = receive_broadcast(plan, self._recv, device)

    def _recv(self, buf) -> None:
        import torch
        from vllm.distributed.device_communicators.pynccl_wrapper import (
            buffer_type,
            cudaStream_t,
            ncclDataTypeEnum,
        )

        sent = self.pending
        if sent.shape != buf.shape or sent.dtype != buf.dtype:
            raise CheckFailed(
                f"tensor {len(self.received)}: the plan says {buf.dtype} {list(buf.shape)}, the learner sent "
                f"{sent.dtype} {list(sent.shape)}"
            )
        self.lib.ncclBroadcast(
            buffer_type(sent.data_ptr()),
            buffer_type(buf.data_ptr()),
            buf.numel(),
            ncclDataTypeEnum.from_torch(buf.dtype),
            0,
            self.comm,
            cudaStream_t(torch.cuda.current_stream().cuda_stream),
        )

    # the PyNcclCommunicator call NcclBroadcaster.send makes
    def broadcast(self, tensor, src, stream=None) -> None:
        self.pending = tensor
        self.received.append(next(self.incoming))

    def destroy(self) -> None:
        self.lib.ncclCommDestroy(self.comm)


def check_nccl(work: Path, device) -> str:
    import socket

    import torch

    from open_instruct.generation.transports import NcclBroadcaster, broadcast_plan
    from open_instruct.generation.worker_ext import stateless_nccl

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = stateless_nccl("127.0.0.1", port, 0, 1, device)  # our rendezvous helper on this vLLM
    rendezvous = (
        "disabled by vLLM at world size 1" if getattr(group, "disabled", False) else "a live communicator"
    )
    cases = [
        ("GPU bf16", _tiny_weights(work, device, "bfloat16"), None),
        ("CPU fp32 -> bf16", _tiny_weights(work, torch.device("cpu"), "float32"), torch.bfloat16),
    ]
    total = 0
    for what, items, dtype in cases:
        plan = broadcast_plan(items, dtype)
        comm = LoopbackComm(plan, device)
        # NcclBroadcaster's __init__ joins engines through Ray; its send path needs only a device and a comm
        sender = NcclBroadcaster.__new__(NcclBroadcaster)
        sender.device, sender.comm = device, comm
        sent = sender.send(items, dtype)
        sender.close()
        names = [n for n, _ in comm.received]
        if names != [n for n, _ in items]:
            raise CheckFailed(
                f"{what}: tensors arrived as {names[:3]}..., sent as {[n for n, _ in items][:3]}..."
            )
        for (name, got), (_, want) in zip(comm.received, items):
            want = want.to(dtype) if dtype is not None and want.is_floating_point() else want
            if not torch.equal(got.cpu(), want.detach().cpu()):
                raise CheckFailed(f"{what}: {name} differs after the broadcast")
        expected = sum(
            t.numel() * (2 if dtype is not None and t.is_floating_point() else t.element_size())
            for _, t in items
        )
        if sent != expected:
            raise CheckFailed(f"{what}: NcclBroadcaster.send reported {sent} bytes, expected {expected}")
        total += sent
    return (
        f"NcclBroadcaster.send -> ncclBroadcast (NCCL {comm.version}, one rank, out of place) -> "
        f"receive_broadcast: {len(cases[0][1])} tensors x {len(cases)} cases ({', '.join(c[0] for c in cases)}), "
        f"{total / 2**20:.1f} MiB bit-exact; stateless_nccl rendezvous ok ({rendezvous}); "
        f"not covered: NCCL between two ranks (needs 2 GPUs)"
    )


def check_rlvr(work: Path, device) -> str:
    import ray

    from open_instruct.config import from_dict
    from open_instruct.rl.rlvr import RLVRConfig, run_rlvr
    from open_instruct.track import read_metrics

    attn, _ = attention_for(device)
    out = work / "rlvr"
    steps = 2
    # a local Ray of our own (connect_ray then uses it): the check must not join a cluster on this machine
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        cfg = from_dict(
            RLVRConfig,
            dict(
                model_name_or_path=str(work / "tiny"),
                dataset_mix=str(samples() / "rlvr_eval.jsonl"),
                output_dir=str(out),
                dtype="bfloat16",
                attn_implementation=attn,
                algorithm="grpo",
                num_unique_prompts_rollout=8,
                num_samples_per_prompt_rollout=4,
                per_device_train_batch_size=16,
                num_epochs=1,
                num_mini_batches=1,
                max_train_steps=steps,
                response_length=24,
                max_prompt_length=64,
                learning_rate=3e-4,
                beta=0.0,
                seed=0,
                # one GPU: the engine shares the learner's device, so weights go over CUDA IPC
                rollout=dict(
                    device="cuda",
                    num_engines=1,
                    transport="ipc",
                    gpu_memory_utilization=0.3,
                    multiprocess_engine=False,
                ),
            ),
            "gpu_check.rlvr",
        )
        run_rlvr(cfg)
    finally:
        ray.shutdown()
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward_mean" in r]
    if len(rows) != steps:
        raise CheckFailed(f"expected {steps} RL steps with rewards in metrics.jsonl, got {len(rows)}")
    bad = [
        k for r in rows for k in ("policy_loss", "reward_mean") if not math.isfinite(r.get(k, float("nan")))
    ]
    if bad:
        raise CheckFailed(f"non-finite metrics: {sorted(set(bad))}")
    _published(out)
    sync = ", ".join(f"{r['weight_sync_s']:.2f}" for r in rows if "weight_sync_s" in r)
    return (
        f"{steps} GRPO steps, 1 vLLM engine on the learner's GPU ({attn}), ipc weight syncs {sync} s, reward "
        f"{rows[0]['reward_mean']:.2f} -> {rows[-1]['reward_mean']:.2f} (random model), {peak_memory(device)}"
    )


CHECK_FNS = {
    "attention": check_attention,
    "sft": check_sft,
    "dpo": check_dpo,
    "ipc": check_ipc,
    "nccl": check_nccl,
    "rlvr": check_rlvr,
}

if __name__ == "__main__":
    sys.exit(main())
