"""Validating a data mix without loading it: every row of every local source, streamed.

`validate_mix(mix_path, kind, where, label_check=None) -> MixCheck` is what a recipe checks before
any stage starts (and what `run --dry-run` plans with). It reads the mix spec, checks that each local
file exists and that EVERY row is valid for `kind` -- JSONL line by line, parquet in batches, JSON
whole -- without building a `datasets.Dataset`. `load_mix` runs the very same scan
(rows.scan_local_source) before it loads a local file, so both apply the same errors, drops and trims
with the same messages. Hub sources are not downloaded here: they are planned from their YAML entry
(`num_rows` when given).

`label_check(dataset, ground_truth) -> str | None` (rlvr) is passed in by the layer that knows the
verifiers (this package does not import reward_fns): it gets the verifier name from the row's
`dataset` column and the label as the verifier will receive it (`ground_truth` as text: strings as
they are, numbers as str, lists/objects as JSON text) and returns None when the label is usable,
else a short reason, which becomes a DataError naming the file, line and verifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DataError, UserError
from .mixes import SourceSpec, check_amount, read_spec, selected_count, source_name
from .rows import LabelCheck, check_kind, report_source, scan_local_source

# ----------------------------------------------------------------------------- validate_mix


@dataclass
class SourceCheck:
    """One source's amounts (the fields of plan.SourceAmount, plus what validation dropped)."""

    name: str  # file path, or `hf_id[:subset][@revision] [split]` for a hub source
    rows: int | None  # rows in the source (read; or the num_rows hint); None: unknown
    selected: int | None  # rows in the mix after dropping and `amount`; None: unknown
    how: str  # "counted" | "num_rows hint" | "unknown"
    dropped: int = 0  # rows dropped (empty content, impossible turn order, preference pair problems)
    trimmed: int = 0  # RLVR prompts whose trailing assistant turns were removed (kept)
    first_problem: str | None = None  # "<file> line N: <why>" of the first dropped row
    first_trimmed: str | None = None


@dataclass
class MixCheck:
    amounts: list[SourceCheck]
    rows: int | None  # total selected rows; None when a hub source's size is unknown
    dataset_names: set[str] = field(default_factory=set)  # rlvr: distinct `dataset` values (local rows)
    dropped: int = 0
    trimmed: int = 0
    kind: str | None = None  # the kind checked (None only when no local source told it)


def _hub_amount(src: SourceSpec) -> SourceCheck:
    name = f"{source_name(src)} [{src.split}]"
    if src.num_rows:
        return SourceCheck(name, src.num_rows, selected_count(src.num_rows, src.amount), "num_rows hint")
    return SourceCheck(name, None, src.amount if isinstance(src.amount, int) else None, "unknown")


def _validate(mix_path: str, kind: str | None, label_check: LabelCheck | None) -> MixCheck:
    spec = read_spec(mix_path)
    if kind is not None:
        check_kind(kind)
        if spec.kind is not None and spec.kind != kind:
            raise DataError(f"{mix_path} is a '{spec.kind}' mix; this stage needs '{kind}' data")
    kind = kind or spec.kind
    amounts: list[SourceCheck] = []
    names: set[str] = set()
    for i, src in enumerate(spec.sources):
        check_amount(src.amount, f"{mix_path} sources[{i}]")
        if src.path is None:
            amounts.append(_hub_amount(src))
            continue
        kind, tally = scan_local_source(src, i, kind, mix_path, label_check, strict_kind=True)
        report_source(src.path, kind, tally)
        selected = selected_count(tally.kept, src.amount)
        if selected == 0:
            raise DataError(f"{mix_path} sources[{i}].amount: {src.amount!r} selects 0 of {tally.kept} rows")
        names |= tally.dataset_names
        amounts.append(
            SourceCheck(
                src.path,
                tally.rows,
                selected,
                "counted",
                dropped=tally.dropped,
                trimmed=tally.trimmed,
                first_problem=tally.first_problem,
                first_trimmed=tally.first_trimmed,
            )
        )
    total = None if any(a.selected is None for a in amounts) else sum(a.selected for a in amounts)
    return MixCheck(
        amounts=amounts,
        rows=total,
        dataset_names=names,
        dropped=sum(a.dropped for a in amounts),
        trimmed=sum(a.trimmed for a in amounts),
        kind=kind,
    )


def validate_mix(
    mix_path: str, kind: str | None, where: str, label_check: LabelCheck | None = None
) -> MixCheck:
    """Checks a mix YAML (or a single data file) for `kind` down to every local row; see the module
    docstring. Errors are one-line DataErrors prefixed with `where` (e.g. `sft.dataset_mix`)."""
    try:
        return _validate(str(mix_path), kind, label_check)
    except UserError as e:
        if not where:
            raise
        raise type(e)(f"{where}: {e}") from None
