"""Data mixes: a YAML list of sources (hub ids or local files) with amounts, loaded through
`datasets`, validated row by row, normalised to the canonical columns (rows.py) and hashed.

    seed: 42                      # seeds the sub-sampling of fractional amounts
    kind: sft                     # optional; the caller's kind wins, else inferred from columns
    sources:
      - hf: allenai/tulu-3-sft-mixture   # + optional `subset`, `split` (default train), `revision`
        amount: 0.5               # float: fraction (2.5 = two full copies + a seeded half)
      - path: samples/sft.jsonl   # .jsonl / .json / .parquet, relative to this YAML
        amount: 1000              # int: absolute row count (above the size: whole copies + rest)
        columns: {conversation: messages}   # renames, applied before validation

A single data file can stand in for a mix (one source, amount 1.0).

Local files are scanned row by row (rows.scan_local_source, streamed), so every problem names its
file and line (JSONL, JSON) or row (parquet); the kept rows are then built into a `datasets.Dataset`
by the same reader. `validate.validate_mix` runs the same scan without building a dataset. Hub
sources (`revision`, the offline cache) are data/hub.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, load_yaml
from ..errors import ConfigError, DataError
from .files import FILE_SUFFIXES, decode_utf8, local_rows, one_line  # noqa: F401 - local_rows: public here too
from .hub import load_hub
from .rows import (
    CANONICAL_COLUMNS,
    LabelCheck,
    check_kind,
    check_row,
    kind_for,
    missing_columns,
    rename_columns,
    report_source,
    scan_local_source,
    validate_rows,
)

log = logging.getLogger(__name__)


@dataclass
class SourceSpec:
    hf: str | None = None
    subset: str | None = None
    path: str | None = None
    split: str = "train"  # hub sources only; a local file is one split
    revision: str | None = None  # hub sources only: a branch, tag or commit sha (default: main)
    amount: Any = 1.0  # float fraction or int count (checked by `check_amount`, not by type coercion)
    columns: dict[str, str] = field(default_factory=dict)
    num_rows: int | None = None  # hub sources: the source's size, a planning hint for `run --dry-run` only


@dataclass
class MixSpec:
    sources: list[SourceSpec]
    seed: int = 42
    kind: str | None = None


@dataclass
class SourceReport:
    name: str  # hub id (+subset) or resolved file path
    rows: int  # rows read
    dropped: int  # rows dropped (empty content, impossible turn order, preference pair problems)
    selected: int  # rows in the mix after `amount`
    first_problem: str | None = None
    trimmed: int = 0  # RLVR prompts whose trailing assistant turns were removed (kept)
    first_trimmed: str | None = None
    revision: str | None = None  # hub: the revision asked for (None: main)
    commit: str | None = None  # hub: the commit loaded, when the local caches tell it (data/hub.py)


@dataclass
class LoadedMix:
    dataset: Any  # datasets.Dataset with the kind's canonical columns
    kind: str
    content_hash: str  # sha256 over the rows' content, in order
    sources: list[SourceReport]
    path: str

    @property
    def num_dropped(self) -> int:
        return sum(s.dropped for s in self.sources)

    @property
    def num_trimmed(self) -> int:
        return sum(s.trimmed for s in self.sources)


# ----------------------------------------------------------------------------- amounts


def check_amount(amount: Any, where: str) -> float | int:
    bad = (
        f"{where}.amount: {amount!r} is not a fraction (float > 0, e.g. 0.5 or 2.5) or a row count (int > 0)"
    )
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise DataError(bad)
    if isinstance(amount, float) and (not math.isfinite(amount) or amount <= 0):
        raise DataError(bad)
    if isinstance(amount, int) and amount <= 0:
        raise DataError(bad)
    return amount


def selected_count(n: int, amount: float | int) -> int:
    """How many rows `amount` selects from `n`: float: round(amount * n) (half up); int: amount."""
    return int(math.floor(amount * n + 0.5)) if isinstance(amount, float) else int(amount)


def amount_indices(n: int, amount: float | int, seed: int) -> list[int]:
    """Row indices for `amount` of an `n`-row source: whole copies in order, then a seeded
    sample without replacement (kept in source order) for the fractional rest.

    float: total = round(amount * n) (2.5 -> 2 copies + half); int: total = amount."""
    import numpy as np

    total = selected_count(n, amount)
    copies, rest = divmod(total, n)
    idx = list(range(n)) * copies
    if rest:
        rng = np.random.default_rng(seed)
        idx += sorted(int(i) for i in rng.permutation(n)[:rest])
    return idx


# ----------------------------------------------------------------------------- specs


def _spec_from_yaml(path: Path) -> MixSpec:
    # load_yaml reads with the locale's codec; refuse non-UTF-8 bytes here first, naming the line.
    decode_utf8(path.read_bytes(), path)
    data = load_yaml(path)
    try:
        spec = from_dict(MixSpec, data, str(path))
    except ConfigError as e:
        raise DataError(str(e)) from None
    if not spec.sources:
        raise DataError(f"{path}: sources is empty")
    for i, src in enumerate(spec.sources):
        where = f"{path} sources[{i}]"
        if (src.hf is None) == (src.path is None):
            raise DataError(f"{where}: give exactly one of 'hf' (a dataset id) or 'path' (a local file)")
        check_amount(src.amount, where)
        if src.revision is not None and (src.path is not None or not src.revision.strip()):
            what = "only hub sources (hf) take one" if src.path is not None else "must be non-empty"
            raise DataError(f"{where}.revision: {src.revision!r}: {what}")
        if src.path is not None:
            p = Path(src.path)
            src.path = str(p if p.is_absolute() else path.parent / p)
    if spec.kind is not None:
        check_kind(spec.kind, f"{path} kind: ")
    return spec


def read_spec(path: str | Path) -> MixSpec:
    """A mix YAML, or a single data file as a one-source mix."""
    path = Path(path)
    if path.suffix in FILE_SUFFIXES:
        return MixSpec(sources=[SourceSpec(path=str(path))], seed=0)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DataError(f"{path}: data mix file not found")
        return _spec_from_yaml(path)
    raise DataError(f"{path}: expected a mix .yaml or a data file ({', '.join(FILE_SUFFIXES)})")


def source_name(src: SourceSpec) -> str:
    if src.path:
        return src.path
    return src.hf + (f":{src.subset}" if src.subset else "") + (f"@{src.revision}" if src.revision else "")


# ----------------------------------------------------------------------------- loading


def _canonical_local_rows(path: str, columns: dict, kind: str, keep: tuple, sha256: str):
    """The kept rows of a local file, canonical, read by the same reader that validated them
    (`datasets`' JSON reader would store a column holding strings in some rows and lists in others
    as JSON text, and give back a string such as "3" as the number 3)."""
    del sha256  # a generator argument only so that datasets' cache key follows the file's bytes
    wanted = iter(keep)
    nxt = next(wanted, None)
    for j, (loc, row) in enumerate(local_rows(path)):
        if j == nxt:
            yield check_row(rename_columns(row, columns), kind, loc)[0]
            nxt = next(wanted, None)


def _local_dataset(src: SourceSpec, kind: str, keep: list[int]):
    from datasets import Dataset

    from .files import sha256_file

    kwargs = {"path": src.path, "columns": src.columns, "kind": kind, "keep": tuple(keep)}
    return Dataset.from_generator(
        _canonical_local_rows,
        features=_features(kind),
        gen_kwargs={**kwargs, "sha256": sha256_file(src.path)},
    )


def _features(kind: str):
    from datasets import Features, List, Value

    messages = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "sft": {"messages": messages, "prompt_turns": Value("int32")},
            "preference": {"chosen": messages, "rejected": messages},
            "rlvr": {"messages": messages, "ground_truth": Value("string"), "dataset": Value("string")},
        }[kind]
    )


def _iter_rows(ds, batch_size: int = 1000):
    """Rows of a Dataset as plain dicts, read a batch at a time (row-by-row Arrow reads are slow)."""
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def _normaliser(kind: str, columns: dict[str, str]):
    def fn(batch):
        keys = list(batch)
        rows = [
            check_row(rename_columns(dict(zip(keys, vals)), columns), kind, "")[0]
            for vals in zip(*(batch[k] for k in keys))
        ]
        return {col: [r[col] for r in rows] for col in CANONICAL_COLUMNS[kind]}

    return fn


def _check_source(src: SourceSpec, i: int, kind: str | None, mix_path: str, label_check=None):
    """Phase 1: read and validate one source. Returns (dataset, kind, keep indices, report)."""
    where = f"{mix_path} sources[{i}]"
    name = source_name(src)
    commit = None
    ds = None  # a local file becomes a Dataset in phase 2, from the rows this scan kept
    if src.path is not None:
        # Our own pass over the file (line by line), so every problem names its line.
        kind, tally = scan_local_source(src, i, kind, mix_path, label_check, keep=True)
    else:
        ds, commit = load_hub(src, where, name)
        for old in src.columns:
            if old not in ds.column_names:
                raise DataError(
                    f"{where}.columns: column '{old}' not in {name} (has: {', '.join(ds.column_names)})"
                )
        renamed = [src.columns.get(c, c) for c in ds.column_names]
        kind = kind_for(kind, renamed, name)
        why = missing_columns(kind, renamed)
        if why:
            raise DataError(f"{name}: {why}")
        label = f"{name} ({src.split})"
        rows = (
            (f"{label} row {j}", rename_columns(row, src.columns)) for j, row in enumerate(_iter_rows(ds))
        )
        tally = validate_rows(rows, kind, label_check, keep=True)
    report_source(name, kind, tally)
    report = SourceReport(
        name=name,
        rows=tally.rows,
        dropped=tally.dropped,
        selected=0,
        first_problem=tally.first_problem,
        trimmed=tally.trimmed,
        first_trimmed=tally.first_trimmed,
        revision=src.revision,
        commit=commit,
    )
    return ds, kind, tally.keep, report


def _finish_source(src: SourceSpec, i: int, ds, kind: str, keep: list[int], seed: int, mix_path: str):
    """Phase 2: drop unusable rows, normalise to canonical columns, apply `amount`."""
    if src.path is not None:
        ds = _local_dataset(src, kind, keep)
    else:
        if len(keep) < len(ds):
            ds = ds.select(keep)
        ds = ds.map(
            _normaliser(kind, src.columns),
            batched=True,
            remove_columns=ds.column_names,
            features=_features(kind),
            desc="normalise rows",
        )
    idx = amount_indices(len(ds), src.amount, seed=seed * 1000 + i)
    if not idx:
        raise DataError(f"{mix_path} sources[{i}].amount: {src.amount!r} selects 0 of {len(ds)} rows")
    if idx != list(range(len(ds))):
        ds = ds.select(idx)
    return ds


def content_hash(ds) -> str:
    """sha256 over the rows' content (canonical JSON per row, in order). Independent of where the
    data was cached or how `datasets` fingerprinted it."""
    h = hashlib.sha256()
    cols = sorted(ds.column_names)
    for batch in ds.iter(batch_size=1000):
        for j in range(len(batch[cols[0]])):
            row = {c: batch[c][j] for c in cols}
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
            h.update(b"\n")
    return h.hexdigest()


def load_mix(path: str | Path, kind: str | None = None, label_check: LabelCheck | None = None) -> LoadedMix:
    """Loads, validates, normalises and samples a data mix (YAML) or a single data file.

    Every source is validated before any is transformed; the result's `dataset` has the kind's
    canonical columns (see rows.py) and `content_hash` identifies its content. `label_check(dataset,
    ground_truth)` (rlvr; see validate.validate_mix) refuses labels the named verifier cannot use."""
    from datasets import concatenate_datasets

    spec = read_spec(path)
    kind = check_kind(kind) if kind is not None else spec.kind
    checked = []
    for i, src in enumerate(spec.sources):  # validate everything before transforming anything
        ds, kind, keep, report = _check_source(src, i, kind, str(path), label_check)
        checked.append((ds, keep, report))
    parts, reports = [], []
    for i, (src, (ds, keep, report)) in enumerate(zip(spec.sources, checked)):
        ds = _finish_source(src, i, ds, kind, keep, spec.seed, str(path))
        report.selected = len(ds)
        parts.append(ds)
        reports.append(report)
    ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if ds._indices is not None:  # materialise sub-sampling once so later maps read contiguously
        ds = ds.flatten_indices()
    return LoadedMix(dataset=ds, kind=kind, content_hash=content_hash(ds), sources=reports, path=str(path))


def describe_spec(spec: MixSpec) -> dict:
    return dataclasses.asdict(spec)
