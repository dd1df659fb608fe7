"""Per-pair response log-probs of a frozen model over a whole preference dataset, computed once
and cached on disk.

DPO needs the reference model's log-prob of every chosen and rejected response. They never change
during training, so (as open-instruct's `dpo_tune_cache.py` does) one pass of the reference model
over the dataset before training replaces a second model held in memory for the whole run.

The pass is sharded over processes (each takes every `world`-th pair of a length-sorted order, so
all shards cost about the same and padding inside a batch is small) and gathered, so every process
ends with the full table. The result is written under

    $OPEN_INSTRUCT_CACHE/reference_logps/<key>.safetensors   (default ~/.cache/open_instruct/...)

keyed by (reference model digest, data content hash, loss type, max length, chat template /
tokenizer fingerprint, dtype). A later run with the same key loads the file and runs no forward
at all. Files are written to a temp name, fsynced and renamed, so a reader never sees half a file;
an unreadable or mismatching file is ignored (and recomputed), never trusted.

Safetensors rather than pickles: a cache directory may be shared, and loading it must not run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

# Bump when what is stored (or how it is computed) changes, to invalidate old files.
CACHE_VERSION = 1


@dataclass
class PairLogps:
    """Summed response log-probs and response token counts, one entry per preference pair."""

    chosen: torch.Tensor  # [N] float32, sum of log pi(y_w|x) over the chosen response's tokens
    rejected: torch.Tensor  # [N] float32
    chosen_tokens: torch.Tensor  # [N] long, trained tokens of the chosen response
    rejected_tokens: torch.Tensor  # [N] long

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    def take(self, indices) -> PairLogps:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return PairLogps(
            self.chosen[idx], self.rejected[idx], self.chosen_tokens[idx], self.rejected_tokens[idx]
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "chosen": self.chosen.contiguous(),
            "rejected": self.rejected.contiguous(),
            "chosen_tokens": self.chosen_tokens.contiguous(),
            "rejected_tokens": self.rejected_tokens.contiguous(),
        }


# ----------------------------------------------------------------------------- keys and files


def cache_root() -> Path:
    """Same root as the tokenisation cache (data/tokenize.py): $OPEN_INSTRUCT_CACHE or ~/.cache."""
    base = os.environ.get("OPEN_INSTRUCT_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "open_instruct"
    return root / "reference_logps"


def cache_key(
    *, model_digest: str, data_hash: str, loss_type: str, max_seq_length: int, template: str, dtype: str
) -> str:
    """Everything the stored numbers depend on. `template` should identify the chat template and the
    tokenizer (data/tokenize.py's `tokenizer_fingerprint` covers both); `dtype` the forward precision."""
    payload = {
        "version": CACHE_VERSION,
        "model": model_digest,
        "data": data_hash,
        "loss_type": loss_type,
        "max_seq_length": int(max_seq_length),
        "template": template,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cache_path(key: str) -> Path:
    return cache_root() / f"{key}.safetensors"


def load(path: Path, expected_pairs: int | None = None) -> PairLogps | None:
    """The cached table, or None when absent, unreadable or not for `expected_pairs` pairs."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        t = load_file(str(path))
        out = PairLogps(t["chosen"], t["rejected"], t["chosen_tokens"], t["rejected_tokens"])
    except Exception as e:  # noqa: BLE001 - a torn/corrupt cache file is recomputed, not fatal
        log.warning("reference cache %s is unreadable (%s: %s); recomputing", path, type(e).__name__, e)
        return None
    if expected_pairs is not None and len(out) != expected_pairs:
        log.warning(
            "reference cache %s holds %d pairs, the data has %d; recomputing", path, len(out), expected_pairs
        )
        return None
    return out


def save(path: Path, logps: PairLogps, meta: dict | None = None) -> None:
    """Atomic write: temp file in the same directory, fsync, rename."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    save_file(logps.tensors(), str(tmp), metadata={k: str(v) for k, v in (meta or {}).items()})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the pass


def pair_lengths(dataset) -> np.ndarray:
    """chosen + rejected token counts per pair, read from Arrow without building Python lists."""
    import pyarrow.compute as pc

    table = dataset.data
    if dataset._indices is not None:  # a selected view: fall back to the (slower) row path
        return np.array(
            [len(c) + len(r) for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"])]
        )
    c = pc.list_value_length(table.column("chosen_input_ids")).to_numpy()
    r = pc.list_value_length(table.column("rejected_input_ids")).to_numpy()
    return (c + r).astype(np.int64)


def compute_pair_logps(
    model: torch.nn.Module,
    dataset,
    *,
    make_batch: Callable[[np.ndarray], dict],
    forward: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, torch.Tensor]],
    batch_pairs: int,
    accelerator=None,
    desc: str = "reference log-probs",
) -> PairLogps:
    """One no-grad pass of `model` over every pair of `dataset`, sharded over the accelerator's
    processes and gathered (every process returns the full table).

    `make_batch(indices)` collates pairs into one concatenated chosen+rejected batch on the right
    device; `forward(model, batch)` returns `(sums [2n], counts [2n])` (chosen first)."""
    n = len(dataset)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    # Longest first: similar lengths share a batch (little padding) and an out-of-memory shows at once.
    order = np.argsort(-pair_lengths(dataset), kind="stable")
    mine = order[rank::world]
    per = -(-n // world)
    valid = np.zeros(per, dtype=bool)
    valid[: len(mine)] = True
    # Equal shard sizes on every process: gather needs equal shapes, and ZeRO-3 needs every rank to
    # run the same number of forwards. Padding entries repeat a real pair and are dropped after.
    mine = np.concatenate([mine, np.full(per - len(mine), order[0], dtype=order.dtype)])
    out = torch.zeros(4, per, dtype=torch.float64)
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    show = (accelerator is None or accelerator.is_main_process) and os.environ.get(
        "OPEN_INSTRUCT_NO_PROGRESS"
    ) != "1"
    autocast = accelerator.autocast() if accelerator is not None else _null()
    try:
        with torch.no_grad(), autocast:
            for start in tqdm(range(0, per, batch_pairs), desc=desc, disable=not show, dynamic_ncols=True):
                chunk = mine[start : start + batch_pairs]
                sums, counts = forward(model, make_batch(chunk))
                k = len(chunk)
                out[0, start : start + k] = sums[:k].double().cpu()
                out[1, start : start + k] = sums[k:].double().cpu()
                out[2, start : start + k] = counts[:k].double().cpu()
                out[3, start : start + k] = counts[k:].double().cpu()
    finally:
        model.train(was_training)
    idx = torch.as_tensor(mine, dtype=torch.long)
    ok = torch.as_tensor(valid)
    if world > 1:
        device = accelerator.device
        out = accelerator.gather(out.to(device).t().contiguous()).t().cpu()  # [4, world*per], rank order
        idx = accelerator.gather(idx.to(device)).cpu()
        ok = accelerator.gather(ok.long().to(device)).cpu().bool()  # gloo gathers no bools
    full = torch.zeros(4, n, dtype=torch.float64)
    full[:, idx[ok]] = out[:, ok]
    return PairLogps(full[0].float(), full[1].float(), full[2].long(), full[3].long())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def cached_pair_logps(
    key: str, num_pairs: int, compute: Callable[[], PairLogps], accelerator=None, meta: dict | None = None
) -> tuple[PairLogps, bool]:
    """The table for `key`: loaded from the cache (no forward at all) or computed with `compute()`
    (which every process runs: it is the sharded pass) and saved by the main process.

    Returns (table, hit). The main process decides hit or miss and, on a hit, sends its table to the
    others, so nodes without a shared cache directory still agree."""
    path = cache_path(key)
    world = accelerator.num_processes if accelerator is not None else 1
    is_main = accelerator is None or accelerator.is_main_process
    found = load(path, num_pairs) if is_main else None
    if world > 1:
        from accelerate.utils import broadcast_object_list

        box = [found]
        broadcast_object_list(box, from_process=0)
        found = box[0]
    if found is not None:
        log.info("reference log-probs: cache hit %s (%d pairs), no reference forward", path, num_pairs)
        return found, True
    table = compute()
    if is_main:
        save(path, table, {"num_pairs": num_pairs, **(meta or {})})
        log.info("reference log-probs: wrote %s (%d pairs)", path, num_pairs)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return table, False
