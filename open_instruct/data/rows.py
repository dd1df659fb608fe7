"""Rows: read from local files (streamed, each named by file and line or row), validated per data
kind (one-line `DataError` naming where and which field) and normalised to the canonical columns
the transforms read. `load_mix` and `validate.validate_mix` share `scan_local_source`.

Canonical rows (what `load_mix` returns):
  sft         {"messages": [{"role", "content"}, ...], "prompt_turns": int}   (the first prompt_turns
              turns are context only: TRL prompt-completion rows train on the completion alone;
              `messages` rows have 0, every assistant turn is trained)
  preference  {"chosen": [...full conversation...], "rejected": [...]}   (same prompt turns)
  rlvr        {"messages": [...prompt turns...], "ground_truth": str, "dataset": str}

Two classes of problems (docs/data.md, "Bad input"):
  errors  the file is not what the stage reads: not a JSON object, a missing column, a value of the
          wrong type, an unknown role, an SFT conversation without an assistant turn, an RLVR row
          without a verifier name. One is enough to stop: every row is likely affected.
  drops   one row's content is unusable, as real mixtures contain: an empty turn or conversation,
          turns in an impossible order (an assistant turn before any user turn, a system turn that
          is not the first turn, two system turns), and for preference pairs identical responses,
          different prompts or no final assistant turn. The row is left out, counted and reported.
RLVR prompts that end with assistant turns are *trimmed* to the prompt (kept, counted apart).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import DataError
from .files import FILE_SUFFIXES, local_rows, one_line, parquet_file

if TYPE_CHECKING:
    from .mixes import SourceSpec

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
KINDS = ("sft", "preference", "rlvr")
REQUIRED_COLUMNS = {
    "sft": ("messages",),  # or TRL's prompt + completion
    "preference": ("chosen", "rejected"),
    "rlvr": ("messages", "ground_truth", "dataset"),
}
CANONICAL_COLUMNS = {
    "sft": ("messages", "prompt_turns"),
    "preference": ("chosen", "rejected"),
    "rlvr": ("messages", "ground_truth", "dataset"),
}
# TRL's plain language-modelling rows: raw text with no roles. Not taken: SFT here trains on
# assistant turns rendered with a chat template, and raw text has neither.
TEXT_COLUMN = (
    "a 'text' column is TRL's plain language-modelling format, which SFT does not read (it trains "
    "on assistant turns): give 'messages', or 'prompt' + 'completion'"
)


class RowCheck(NamedTuple):
    """What `classify_row` found: the canonical row, why it is dropped (None: kept) and, for an
    RLVR prompt that ended with assistant turns, what was trimmed (None: nothing)."""

    row: dict
    dropped: str | None
    trimmed: str | None


def check_kind(kind: str, where: str = "") -> str:
    if kind not in KINDS:
        raise DataError(f"{where}data kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def infer_kind(columns) -> str | None:
    """Guesses the kind from column names (used when neither the caller nor the mix names it)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if {"messages", "ground_truth"} <= cols:
        return "rlvr"
    if "messages" in cols or {"prompt", "completion"} <= cols:
        return "sft"
    return None


def missing_columns(kind: str, columns) -> str | None:
    """Why a source with these columns cannot hold `kind` rows, or None. Preference rows may be
    `prompt` + bare responses and are checked row by row."""
    cols = set(columns)
    have = column_names(columns)
    if kind == "preference":
        return None
    if kind == "sft":
        if "messages" in cols or {"prompt", "completion"} <= cols:
            return None
        if "prompt" in cols or "completion" in cols:
            col = "completion" if "prompt" in cols else "prompt"
            return f"missing column '{col}' for sft prompt-completion data (has: {have})"
        if "text" in cols:
            return TEXT_COLUMN
        return f"missing column 'messages' (or 'prompt' + 'completion') for sft data (has: {have})"
    for col in REQUIRED_COLUMNS[kind]:
        if col not in cols:
            return f"missing column '{col}' for {kind} data (has: {have})"
    return None


def _turns(value: Any, where: str, field: str) -> list[dict]:
    """The hard checks of a list of {role, content} turns; returns it reduced to those two keys.
    Empty content is left for `_empty_problem` (a drop, not an error)."""
    if not isinstance(value, list):
        raise DataError(
            f"{where}: {field} must be a list of {{role, content}} turns, got {type(value).__name__}"
        )
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise DataError(
                f"{where}: {field}[{i}] must be a mapping with role and content, got {type(turn).__name__}"
            )
        if "role" not in turn:
            raise DataError(f"{where}: {field}[{i}].role is missing")
        role = turn["role"]
        if role not in ROLES:
            raise DataError(f"{where}: {field}[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        if "content" not in turn:
            raise DataError(f"{where}: {field}[{i}].content is missing")
        content = turn["content"]
        if not isinstance(content, str):
            raise DataError(f"{where}: {field}[{i}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _empty_problem(turns: list[dict], field: str) -> str | None:
    if not turns:
        return f"{field} is an empty list"
    for i, t in enumerate(turns):
        if not t["content"].strip():
            return f"{field}[{i}].content is empty"
    return None


def order_problem(turns: list[dict], field: str) -> str | None:
    """Why the turns' order is impossible, or None. Allowed: at most one system turn, first; then a
    user turn before any assistant turn. Consecutive turns of one role are allowed (real data has
    them and the transforms handle them)."""
    systems = [i for i, t in enumerate(turns) if t["role"] == "system"]
    if len(systems) > 1:
        at = ", ".join(f"{field}[{i}]" for i in systems)
        return f"{field} has {len(systems)} system turns ({at}); at most one, as the first turn"
    if systems and systems[0] != 0:
        return f"{field}[{systems[0]}] is a system turn after the conversation started (only the first turn may be one)"
    first = 1 if systems else 0
    if first < len(turns) and turns[first]["role"] == "assistant":
        return f"{field}[{first}] is an assistant turn before any user turn"
    return None


def check_messages(value: Any, where: str, field: str, allow_empty: bool = False) -> list[dict]:
    """Validates a list of {role, content} turns; returns it reduced to exactly those two keys.
    Raises on every problem, empty content included (row checks use `classify_row`, which drops
    rows with empty content instead)."""
    turns = _turns(value, where, field)
    if not turns and allow_empty:
        return turns
    problem = _empty_problem(turns, field)
    if problem:
        raise DataError(f"{where}: {problem}")
    return turns


def _require(row: dict, kind: str, where: str, columns=None) -> None:
    for col in columns or REQUIRED_COLUMNS[kind]:
        if col not in row or row[col] is None:
            raise DataError(f"{where}: missing column '{col}' for {kind} data (row has: {_have(row)})")


def column_names(names) -> str:
    """Column names for a one-line message: odd names (newlines, blanks, non-strings) quoted."""
    shown = [k if isinstance(k, str) and k.isprintable() and k.strip() == k and k else repr(k) for k in names]
    return ", ".join(shown) or "nothing"


def _have(row: dict) -> str:
    return column_names(sorted(str(k) for k, v in row.items() if v is not None))


def _sft(row: dict, where: str) -> RowCheck:
    if row.get("messages") is None:
        if row.get("prompt") is not None or row.get("completion") is not None:
            return _prompt_completion(row, where)
        if row.get("text") is not None:
            raise DataError(f"{where}: {TEXT_COLUMN}")
        raise DataError(
            f"{where}: missing column 'messages' (or 'prompt' + 'completion') for sft data (row has: {_have(row)})"
        )
    # Tülu / TRL conversational rows (a `prompt` column beside them, as in UltraChat, repeats a turn)
    turns = _turns(row["messages"], where, "messages")
    if turns and not any(t["role"] == "assistant" for t in turns):
        raise DataError(f"{where}: messages has no assistant turn (nothing to train on)")
    problem = _empty_problem(turns, "messages") or order_problem(turns, "messages")
    return RowCheck({"messages": turns, "prompt_turns": 0}, problem, None)


def _prompt_completion(row: dict, where: str) -> RowCheck:
    """TRL's prompt-completion rows, as text or as turns: only the completion is trained (earlier
    assistant turns inside a conversational prompt are context, as in TRL's completion-only loss)."""
    for col in ("prompt", "completion"):
        if row.get(col) is None:
            raise DataError(
                f"{where}: missing column '{col}' for sft prompt-completion data (row has: {_have(row)})"
            )
    prompt, problem = _prompt_turns(row, where)
    value = row["completion"]
    if isinstance(value, str):
        completion = [{"role": "assistant", "content": value}]
        problem = problem or (None if value.strip() else "completion is empty")
    elif isinstance(value, list):
        completion = _turns(value, where, "completion")
        for i, t in enumerate(completion):
            if t["role"] != "assistant":
                raise DataError(
                    f"{where}: completion[{i}].role {t['role']!r}: a completion holds assistant turns only "
                    f"(earlier turns belong in the prompt)"
                )
        problem = problem or _empty_problem(completion, "completion")
    else:
        raise DataError(
            f"{where}: completion must be a string or a list of {{role, content}} turns, got {type(value).__name__}"
        )
    if problem is None and not any(t["role"] == "user" for t in prompt):
        problem = "prompt has no user turn"
    return RowCheck({"messages": prompt + completion, "prompt_turns": len(prompt)}, problem, None)


def _label_text(value: Any, where: str, field: str) -> str:
    # Verifiers take the label as text; structured labels (lists, objects) travel as JSON text.
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: {field} must be a string, number or JSON value, got {value!r}")
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _rlvr(row: dict, where: str) -> RowCheck:
    _require(row, "rlvr", where)
    turns = _turns(row["messages"], where, "messages")
    dataset = row["dataset"]
    if not isinstance(dataset, str) or not dataset.strip():
        raise DataError(f"{where}: dataset must be a non-empty string naming the verifier, got {dataset!r}")
    label = _label_text(row["ground_truth"], where, "ground_truth")
    # The order is judged on the whole conversation; only the prompt that is kept must be non-empty
    # (an empty trailing assistant turn is trimmed away anyway).
    end = len(turns)
    while end and turns[end - 1]["role"] == "assistant":
        end -= 1
    problem = order_problem(turns, "messages") if turns else "messages is an empty list"
    prompt = turns[:end]
    problem = problem or _empty_problem(prompt, "messages")
    trimmed = None
    if end < len(turns) and problem is None:
        k = len(turns) - end
        trimmed = f"messages ended with {k} assistant turn{'s' if k > 1 else ''} (messages[{end}:] trimmed)"
    return RowCheck({"messages": prompt, "ground_truth": label, "dataset": dataset}, problem, trimmed)


def _prompt_turns(row: dict, where: str) -> tuple[list[dict], str | None]:
    if "prompt" not in row or row["prompt"] is None:
        raise DataError(f"{where}: missing column 'prompt' (chosen/rejected are bare responses)")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], (None if prompt.strip() else "prompt is empty")
    if not isinstance(prompt, list):
        raise DataError(
            f"{where}: prompt must be a string or a list of {{role, content}} turns, got {type(prompt).__name__}"
        )
    turns = _turns(prompt, where, "prompt")
    return turns, _empty_problem(turns, "prompt") or order_problem(turns, "prompt")


def _response(row: dict, field: str, where: str) -> tuple[list[dict], str | None]:
    """One side of a preference pair as a full conversation (TRL or Tülu form), with its problem."""
    value = row[field]
    if isinstance(value, str):  # TRL: prompt + bare response text
        prompt, problem = _prompt_turns(row, where)
        if not value.strip():
            problem = problem or f"{field} is empty"
        return prompt + [{"role": "assistant", "content": value}], problem
    turns = _turns(value, where, field)
    if turns and all(t["role"] == "assistant" for t in turns) and row.get("prompt") is not None:
        prompt, problem = _prompt_turns(row, where)  # TRL explicit prompt + assistant turn(s)
        return prompt + turns, problem or _empty_problem(turns, field)
    # Tülu: the whole conversation (a `prompt` string column, if any, duplicates it)
    return turns, _empty_problem(turns, field) or order_problem(turns, field)


def _preference(row: dict, where: str) -> RowCheck:
    _require(row, "preference", where)
    # Both sides are read (hard errors in either raise) before a soft problem decides the row.
    chosen, chosen_problem = _response(row, "chosen", where)
    rejected, rejected_problem = _response(row, "rejected", where)
    out = {"chosen": chosen, "rejected": rejected}
    problem = chosen_problem or rejected_problem
    if problem:
        return RowCheck(out, problem, None)
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        side = "chosen" if chosen[-1]["role"] != "assistant" else "rejected"
        return RowCheck(out, f"{side} does not end with an assistant turn", None)
    if len(chosen) < 2 or len(rejected) < 2:
        return RowCheck(out, "no prompt before the response", None)
    if chosen[:-1] != rejected[:-1]:
        return RowCheck(out, "chosen and rejected have different prompts", None)
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return RowCheck(out, "chosen and rejected responses are identical", None)
    return RowCheck(out, None, None)


_CHECKS = {"sft": _sft, "rlvr": _rlvr, "preference": _preference}


def classify_row(row: Any, kind: str, where: str) -> RowCheck:
    """Validates one raw row of `kind`: raises `DataError` on errors, returns the canonical row
    with the reason it is dropped (or None) and what was trimmed (RLVR; or None)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    check = _CHECKS.get(kind)
    if check is None:
        raise DataError(f"data kind {kind!r} is not one of {', '.join(KINDS)}")
    return check(row, where)


def check_row(row: Any, kind: str, where: str) -> tuple[dict, str | None]:
    """Validates one raw row of `kind`. Returns (canonical row, reason to drop it or None); raises
    `DataError` on errors. An RLVR prompt ending with assistant turns comes back trimmed."""
    out = classify_row(row, kind, where)
    return out.row, out.dropped


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    if not columns:
        return row
    return {columns.get(k, k): v for k, v in row.items()}


# label_check(dataset, ground_truth text) -> None when the verifier accepts the label, else why not.
LabelCheck = Callable[[str, str], "str | None"]


# ----------------------------------------------------------------------------- validation


def kind_for(kind: str | None, columns, name: str) -> str:
    if kind is None:
        kind = infer_kind(columns)
        if kind is None:
            hint = TEXT_COLUMN if "text" in columns else "pass --kind or set `kind:` in the mix"
            raise DataError(f"{name}: cannot tell the data kind from columns {', '.join(columns)}; {hint}")
    return kind


@dataclass
class SourceTally:
    """What validating one source's rows found."""

    rows: int = 0  # rows read
    kept: int = 0  # rows neither dropped nor refused
    keep: list[int] | None = None  # indices of kept rows (when asked for)
    dropped: int = 0
    first_problem: str | None = None  # "<file> line N: <why>"
    trimmed: int = 0
    first_trimmed: str | None = None
    dataset_names: set[str] = field(default_factory=set)  # rlvr: verifier names of kept rows


def _shown(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def validate_rows(rows, kind: str, label_check: LabelCheck | None = None, keep: bool = False) -> SourceTally:
    """Checks every (location, raw row): raises on errors, counts drops and trims, and (rlvr) asks
    `label_check` about each kept row's label. Nothing is kept in memory but counts (and, with
    `keep`, the indices of kept rows)."""
    t = SourceTally(keep=[] if keep else None)
    names = t.dataset_names
    for i, (loc, row) in enumerate(rows):
        t.rows += 1
        out, dropped, trimmed = classify_row(row, kind, loc)
        if dropped is not None:
            t.dropped += 1
            if t.first_problem is None:
                t.first_problem = f"{loc}: {dropped}"
            continue
        if trimmed is not None:
            t.trimmed += 1
            if t.first_trimmed is None:
                t.first_trimmed = f"{loc}: {trimmed}"
        if kind == "rlvr":
            name = out["dataset"]
            names.add(name)
            if label_check is not None:
                try:
                    reason = label_check(name, out["ground_truth"])
                except ValueError as e:  # e.g. reward_fns' UnknownRewardError for a name it lacks
                    raise DataError(f"{loc}: dataset {name!r}: {one_line(e)}") from None
                if reason is not None:
                    raise DataError(
                        f"{loc}: ground_truth {_shown(row.get('ground_truth'))} is not a label the "
                        f"{name} verifier accepts: {one_line(reason)}"
                    )
        t.kept += 1
        if t.keep is not None:
            t.keep.append(i)
    return t


def report_source(name: str, kind: str, t: SourceTally) -> None:
    """Logs a source's drops and trims (count + first example); no usable row is an error."""
    if t.dropped:
        log.warning(
            "%s: dropped %d of %d %s rows with problems; first: %s",
            name,
            t.dropped,
            t.rows,
            kind,
            t.first_problem,
        )
    if t.trimmed:
        log.warning(
            "%s: trimmed trailing assistant turns from %d of %d %s prompts (kept); first: %s",
            name,
            t.trimmed,
            t.rows,
            kind,
            t.first_trimmed,
        )
    if not t.kept:
        raise DataError(f"{name}: all {t.rows} rows are unusable; first: {t.first_problem or 'no rows'}")


def scan_local_source(
    src: SourceSpec,
    i: int,
    kind: str | None,
    mix_path: str,
    label_check: LabelCheck | None = None,
    keep: bool = False,
    strict_kind: bool = False,
) -> tuple[str, SourceTally]:
    """Reads and validates every row of a local source without building a dataset. Returns (kind,
    tally); the kind is inferred from the columns when None. `strict_kind`: columns that look like
    another kind are an error (the recipe check's rule)."""
    where = f"{mix_path} sources[{i}]"
    path = Path(src.path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found ({where}.path)")
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(FILE_SUFFIXES)})")
    schema = parquet_file(path).schema_arrow.names if path.suffix == ".parquet" else None
    rows = local_rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: the file has no rows")
    have = schema if schema is not None else list(first[1])
    seen = f"{path}" if schema is not None else first[0]
    for old in src.columns:
        if old not in have:
            raise DataError(f"{where}.columns: column '{old}' not in {seen} (has: {', '.join(have)})")
    renamed = [src.columns.get(c, c) for c in have]
    if strict_kind and kind is not None:
        got = infer_kind(renamed)
        if got is not None and got != kind and not (kind == "preference" and "prompt" in renamed):
            raise DataError(f"{path} has {got} columns ({', '.join(renamed)}); this stage needs {kind} data")
    kind = kind_for(kind, renamed, str(path))
    why = missing_columns(kind, renamed) if schema is not None else None
    if why:
        raise DataError(f"{path}: {why}")
    columns = src.columns
    rows = ((loc, rename_columns(row, columns)) for loc, row in itertools.chain([first], rows))
    return kind, validate_rows(rows, kind, label_check, keep=keep)
