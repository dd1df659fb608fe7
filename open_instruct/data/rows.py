"""Row formats per data kind: validation (one-line `DataError` naming where and which field) and
normalisation to the canonical columns the transforms read.

Canonical rows (what `load_mix` returns):
  sft         {"messages": [{"role", "content"}, ...]}
  preference  {"chosen": [...full conversation...], "rejected": [...]}   (same prompt turns)
  rlvr        {"messages": [...prompt turns...], "ground_truth": str, "dataset": str}

Hard problems (bad structure, unknown role, empty or non-string content, missing column) raise.
Preference rows also have *soft* problems that real preference mixes contain (identical chosen and
rejected, prompts that differ, no final assistant turn): those rows are dropped and counted.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import DataError

ROLES = ("system", "user", "assistant")
KINDS = ("sft", "preference", "rlvr")
REQUIRED_COLUMNS = {
    "sft": ("messages",),
    "preference": ("chosen", "rejected"),
    "rlvr": ("messages", "ground_truth", "dataset"),
}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DataError(f"data kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def infer_kind(columns) -> str | None:
    """Guesses the kind from column names (used when neither the caller nor the mix names it)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if {"messages", "ground_truth"} <= cols:
        return "rlvr"
    if "messages" in cols:
        return "sft"
    return None


def check_messages(value: Any, where: str, field: str, allow_empty: bool = False) -> list[dict]:
    """Validates a list of {role, content} turns; returns it reduced to exactly those two keys."""
    if not isinstance(value, list):
        raise DataError(
            f"{where}: {field} must be a list of {{role, content}} turns, got {type(value).__name__}"
        )
    if not value and not allow_empty:
        raise DataError(f"{where}: {field} is an empty list")
    out = []
    for i, turn in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(
                f"{where}: {f} must be a mapping with role and content, got {type(turn).__name__}"
            )
        role = turn.get("role")
        if "role" not in turn:
            raise DataError(f"{where}: {f}.role is missing")
        if role not in ROLES:
            raise DataError(f"{where}: {f}.role {role!r} is not one of {', '.join(ROLES)}")
        if "content" not in turn:
            raise DataError(f"{where}: {f}.content is missing")
        content = turn["content"]
        if not isinstance(content, str):
            raise DataError(f"{where}: {f}.content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise DataError(f"{where}: {f}.content is empty")
        out.append({"role": role, "content": content})
    return out


def _require(row: dict, kind: str, where: str, columns=None) -> None:
    for col in columns or REQUIRED_COLUMNS[kind]:
        if col not in row or row[col] is None:
            have = ", ".join(sorted(k for k, v in row.items() if v is not None)) or "nothing"
            raise DataError(f"{where}: missing column '{col}' for {kind} data (row has: {have})")


def _sft(row: dict, where: str) -> dict:
    _require(row, "sft", where)
    messages = check_messages(row["messages"], where, "messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: messages has no assistant turn (nothing to train on)")
    return {"messages": messages}


def _label_text(value: Any, where: str, field: str) -> str:
    # Verifiers take the label as text; structured labels (lists, objects) travel as JSON text.
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: {field} must be a string, number or JSON value, got {value!r}")
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _rlvr(row: dict, where: str) -> dict:
    _require(row, "rlvr", where)
    messages = check_messages(row["messages"], where, "messages")
    if messages[-1]["role"] == "assistant":
        raise DataError(
            f"{where}: messages[{len(messages) - 1}].role: an RLVR prompt must not end with an assistant turn"
        )
    dataset = row["dataset"]
    if not isinstance(dataset, str) or not dataset.strip():
        raise DataError(f"{where}: dataset must be a non-empty string naming the verifier, got {dataset!r}")
    return {
        "messages": messages,
        "ground_truth": _label_text(row["ground_truth"], where, "ground_truth"),
        "dataset": dataset,
    }


def _prompt_turns(row: dict, where: str) -> list[dict]:
    if "prompt" not in row or row["prompt"] is None:
        raise DataError(f"{where}: missing column 'prompt' (chosen/rejected are bare responses)")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: prompt is empty")
        return [{"role": "user", "content": prompt}]
    return check_messages(prompt, where, "prompt")


def _response(row: dict, field: str, where: str) -> list[dict]:
    """One side of a preference pair as a full conversation (TRL or Tülu form)."""
    value = row[field]
    if isinstance(value, str):  # TRL: prompt + bare response text
        if not value.strip():
            raise DataError(f"{where}: {field} is empty")
        return _prompt_turns(row, where) + [{"role": "assistant", "content": value}]
    turns = check_messages(value, where, field)
    if all(t["role"] == "assistant" for t in turns) and row.get("prompt") is not None:
        return _prompt_turns(row, where) + turns  # TRL explicit prompt + assistant turn(s)
    return turns  # Tülu: the whole conversation (a `prompt` string column, if any, duplicates it)


def _preference(row: dict, where: str) -> tuple[dict, str | None]:
    _require(row, "preference", where)
    chosen = _response(row, "chosen", where)
    rejected = _response(row, "rejected", where)
    out = {"chosen": chosen, "rejected": rejected}
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        side = "chosen" if chosen[-1]["role"] != "assistant" else "rejected"
        return out, f"{side} does not end with an assistant turn"
    if len(chosen) < 2 or len(rejected) < 2:
        return out, "no prompt before the response"
    if chosen[:-1] != rejected[:-1]:
        return out, "chosen and rejected have different prompts"
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return out, "chosen and rejected responses are identical"
    return out, None


def check_row(row: Any, kind: str, where: str) -> tuple[dict, str | None]:
    """Validates one raw row of `kind`. Returns (canonical row, soft problem or None); raises
    `DataError` on hard problems. Only preference rows have soft problems."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if kind == "sft":
        return _sft(row, where), None
    if kind == "rlvr":
        return _rlvr(row, where), None
    if kind == "preference":
        return _preference(row, where)
    raise DataError(f"data kind {kind!r} is not one of {', '.join(KINDS)}")


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    if not columns:
        return row
    return {columns.get(k, k): v for k, v in row.items()}
