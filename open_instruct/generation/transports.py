"""Weight-sync transports: the learner's weights (an HF model in the driver process) -> every vLLM engine.

Called after each training step as `group.sync_weights(model.state_dict())`; the group holds one
transport, which owns everything a sync leaves behind (the latest weights for an engine that restarts,
the NCCL group) and exposes `send(weights) -> timings`, `catch_up(engine)` and `close()`. The names are HF
state-dict names: vLLM's `load_weights` for Llama / OLMo 2 takes them as they are (it fuses
q/k/v into qkv_proj and gate/up into gate_up_proj itself; verified by the parity test, which
checks that every vLLM parameter was loaded). Three transports, chosen by
`RolloutConfig.transport`:

- `cpu`  (no NCCL; the CPU build, or any cluster): the state dict is serialised once with
  safetensors, put in Ray's object store once, and each engine actor hands it to its workers
  (a /dev/shm file, or bytes through vLLM's RPC pipe) where `oi_load_safetensors` loads it
  inside vLLM's layerwise reload. A restarted engine gets the same object again.
- `nccl` (GPU engines, learner on its own GPU): the learner joins a StatelessProcessGroup +
  PyNcclCommunicator as rank 0 with every engine worker after it (vLLM's own recipe), sends the
  plan (name, dtype, shape per tensor) through Ray and broadcasts the tensors in that order.
- `ipc`  (GPU engine colocated with the learner on the same device): CUDA IPC handles of the
  learner's tensors; the engine opens them in place, no copy through the host.

Every sync returns timings; `seconds` is the wall time the learner waits.
"""

from __future__ import annotations

import pickle
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .worker_ext import PlanEntry, stateless_nccl

if TYPE_CHECKING:
    from .group import RolloutGroup

# Wrappers that prefix parameter names: DDP/DeepSpeed ("module."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def named_tensors(
    weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
) -> list[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs with wrapper prefixes removed, in the given order."""
    items = weights.items() if isinstance(weights, Mapping) else weights
    out = []
    for name, tensor in items:
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix) :], True
        out.append((name, tensor))
    return out


def wire_dtype(engine_dtype: str) -> torch.dtype | None:
    """The dtype to send in: the engine's when it is explicit (halves the bytes for a bf16
    engine fed by an fp32 learner; vLLM would cast on load anyway), else the learner's."""
    return _DTYPES.get(engine_dtype)


def serialize_safetensors(weights, dtype: torch.dtype | None = None) -> bytes:
    """safetensors bytes of the weights (CPU, contiguous, optionally cast). Tensors that share
    storage (tied embeddings) are cloned: safetensors refuses aliases, and vLLM skips the tied
    copy itself."""
    import safetensors.torch

    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, t in named_tensors(weights):
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        tensors[name] = t
    return safetensors.torch.save(tensors)


def _check_complete(results: list[dict], transport: str) -> None:
    missing = sorted({m for r in results for m in r["missing"]})
    if missing:
        raise RuntimeError(
            f"weight sync ({transport}) left {len(missing)} vLLM parameters unloaded "
            f"(names not matching the engine's architecture?): {missing[:5]}"
        )


# ---- NCCL ------------------------------------------------------------------------------------
def broadcast_plan(
    items: list[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None
) -> list[PlanEntry]:
    """What the engines must allocate, in send order: (name, dtype name, shape); floating
    tensors are sent in `dtype` when given (see wire_dtype)."""

    def name_of(t: torch.Tensor) -> str:
        d = dtype if dtype is not None and t.is_floating_point() else t.dtype
        return str(d).removeprefix("torch.")

    return [(name, name_of(t), list(t.shape)) for name, t in items]


def nccl_rank_offsets(num_engines: int, tensor_parallel_size: int) -> tuple[list[int], int]:
    """Learner = rank 0; engine i's TP workers take ranks 1 + i*tp ... Returns (offsets, world)."""
    return [1 + i * tensor_parallel_size for i in range(num_engines)], 1 + num_engines * tensor_parallel_size


def broadcast_tensors(
    broadcast: Callable[[torch.Tensor], None],
    items: list[tuple[str, torch.Tensor]],
    dtype: torch.dtype | None = None,
) -> int:
    """Sends each tensor (as planned) from rank 0; returns bytes sent. A non-contiguous view
    would ship whatever follows its data pointer, hence `.contiguous()`."""
    sent = 0
    for _, t in items:
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        broadcast(t)
        sent += t.numel() * t.element_size()
    return sent


class NcclBroadcaster:
    """The learner's end (rank 0) of the learner -> engine-workers NCCL group."""

    def __init__(self, group: RolloutGroup, device: torch.device):
        import ray

        self.device = device
        self.address = ray.util.get_node_ip_address()
        self.port = _free_port()
        offsets, self.world_size = nccl_rank_offsets(len(group.engines), group.cfg.tensor_parallel_size)
        # Both sides block in the rendezvous: start the engines' joins, then join ourselves.
        refs = [
            e.init_broadcast_group.remote(self.address, self.port, off, self.world_size)
            for e, off in zip(group.engines, offsets)
        ]
        self.comm = stateless_nccl(self.address, self.port, 0, self.world_size, device)
        ray.get(refs)

    def send(self, items, dtype=None) -> int:
        stream = torch.cuda.current_stream()
        sent = broadcast_tensors(
            lambda t: self.comm.broadcast(t.to(self.device), src=0, stream=stream), items, dtype
        )
        stream.synchronize()
        return sent

    def close(self) -> None:
        if hasattr(self.comm, "destroy"):
            self.comm.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ---- CUDA IPC --------------------------------------------------------------------------------
def ipc_handles(
    items: list[tuple[str, torch.Tensor]],
    device_uuid: str,
    reduce: Callable[[torch.Tensor], tuple] | None = None,
) -> tuple[bytes, list[torch.Tensor]]:
    """Pickled {device uuid: [(name, (rebuild_fn, args))]} and the tensors that must stay alive
    until the engine has loaded them."""
    if reduce is None:
        from torch.multiprocessing.reductions import reduce_tensor as reduce
    keep = [t.detach().contiguous() for _, t in items]
    entries = [(name, reduce(t)) for (name, _), t in zip(items, keep)]
    return pickle.dumps({device_uuid: entries}), keep


class CpuTransport:
    """No NCCL (the CPU build, or any cluster): safetensors bytes, put in Ray's object store once; each
    engine actor hands them to its workers (a /dev/shm file on its node, or bytes through vLLM's RPC
    pipe). A restarted engine gets the same object again."""

    name = "cpu"

    def __init__(self, group: RolloutGroup):
        self.group = group
        self.latest = None  # ObjectRef of the latest safetensors bytes

    def send(self, weights) -> dict:
        import ray

        group = self.group
        t0 = time.perf_counter()
        payload = serialize_safetensors(weights, wire_dtype(group.cfg.dtype))
        t_ser = time.perf_counter() - t0
        # Set before sending: an engine restarted during this sync must get these weights.
        self.latest = ray.put(payload)
        args = (self.latest, group.cfg.cpu_payload == "shm")
        results, restarts = group.run_on_engines("load_safetensors", [args] * len(group.engines))
        _check_complete(results, "cpu")
        return {
            "transport": "cpu",
            "seconds": time.perf_counter() - t0,
            "serialize_seconds": t_ser,
            "bytes": len(payload),
            "engine_seconds": max(r["engine_seconds"] for r in results),
            "worker_seconds": max(r["worker_seconds"] for r in results),
            "restarts": restarts,
        }

    def catch_up(self, engine) -> None:
        """Queues the latest weights on a fresh engine actor (Ray runs an actor's calls in order, so
        anything queued after this sees them)."""
        if self.latest is not None:
            engine.load_safetensors.remote(self.latest, self.group.cfg.cpu_payload == "shm")

    def close(self) -> None:
        self.latest = None


class _GpuTransport:
    """Shared by NCCL and IPC: keeps a reference to the latest weights so an engine that restarts can
    catch up through the CPU path (its old NCCL group included the dead engine)."""

    def __init__(self, group: RolloutGroup):
        self.group = group
        self.latest = None

    def catch_up(self, engine) -> None:
        import ray

        if self.latest is not None:
            engine.load_safetensors.remote(ray.put(serialize_safetensors(self.latest)))
            self.close()

    def close(self) -> None:
        pass


class NcclTransport(_GpuTransport):
    """GPU engines, learner on its own GPU, on any node: the learner joins a StatelessProcessGroup +
    PyNcclCommunicator as rank 0 with every engine worker after it (vLLM's own recipe), sends the plan
    (name, dtype, shape per tensor) through Ray and broadcasts the tensors in that order."""

    name = "nccl"

    def __init__(self, group: RolloutGroup):
        super().__init__(group)
        self.broadcaster: NcclBroadcaster | None = None

    def send(self, weights) -> dict:
        import ray

        group = self.group
        t0 = time.perf_counter()
        items = named_tensors(weights)
        dtype = wire_dtype(group.cfg.dtype)
        if self.broadcaster is None:
            first = items[0][1].device
            # ZeRO-3 gathers the full weights to CPU: they travel through the learner's current GPU
            device = first if first.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
            self.broadcaster = NcclBroadcaster(group, device)
        plan = broadcast_plan(items, dtype)
        refs = [e.receive_broadcast.remote(plan) for e in group.engines]
        sent = self.broadcaster.send(items, dtype)
        results = ray.get(refs)
        _check_complete(results, "nccl")
        self.latest = weights
        return {
            "transport": "nccl",
            "seconds": time.perf_counter() - t0,
            "bytes": sent,
            "worker_seconds": max(r["worker_seconds"] for r in results),
            "restarts": 0,
        }

    def close(self) -> None:
        """Tears down the learner <-> engines NCCL group (rebuilt at the next send). The engines' close
        calls are queued, so they run before any later init on the same actor."""
        if self.broadcaster is not None:
            for e in self.group.engines:
                e.close_broadcast_group.remote()
            self.broadcaster.close()
            self.broadcaster = None


class IpcTransport(_GpuTransport):
    """GPU engine colocated with the learner on the same device: CUDA IPC handles of the learner's
    tensors; the engine opens them in place, no copy through the host."""

    name = "ipc"

    def send(self, weights) -> dict:
        import ray

        group = self.group
        t0 = time.perf_counter()
        items = named_tensors(weights)
        dtype = wire_dtype(group.cfg.dtype)
        if dtype is not None:
            items = [(n, t.to(dtype) if t.is_floating_point() else t) for n, t in items]
        device = items[0][1].device
        payload, keep = ipc_handles(items, str(torch.cuda.get_device_properties(device).uuid))
        torch.cuda.synchronize(device)
        results = ray.get([e.load_ipc.remote(payload) for e in group.engines])
        del keep  # the engines have copied the weights into their own parameters
        _check_complete(results, "ipc")
        self.latest = weights
        return {
            "transport": "ipc",
            "seconds": time.perf_counter() - t0,
            "bytes": len(payload),
            "worker_seconds": max(r["worker_seconds"] for r in results),
            "restarts": 0,
        }


TRANSPORTS = {"cpu": CpuTransport, "nccl": NcclTransport, "ipc": IpcTransport}


def describe(weights) -> dict[str, Any]:
    """Parameter count and bytes of a state dict (for logs)."""
    items = named_tensors(weights)
    return {
        "tensors": len(items),
        "parameters": sum(t.numel() for _, t in items),
        "bytes": sum(t.numel() * t.element_size() for _, t in items),
    }
