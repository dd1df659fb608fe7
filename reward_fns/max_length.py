"""``max_length``: reward staying within a length budget.

Label: a number N (``512`` or ``"512"``) or ``{"max_length": N, "unit": "tokens"|"words"|"chars",
"mode": "max"|"target"}``. The length L is of the whole completion (thinking included: the budget is
about generation cost). ``unit`` defaults to tokens, counted from ``token_ids``; when the caller has no
token ids, whitespace-separated words are counted instead and the metadata says so.

* mode ``max`` (default): 1.0 when L <= N, then falling linearly to 0.0 at L = 2N:
  ``max(0, 1 - (L - N) / N)``.
* mode ``target``: 1.0 at exactly N, falling linearly with the distance: ``max(0, 1 - |L - N| / N)``.
"""

from __future__ import annotations

import json
import math

from .labels import from_parser, is_number, kind
from .registry import RewardResult, register

_UNITS = ("tokens", "words", "chars")
_MODES = ("max", "target")
LABEL_TYPES = (
    'a length N >= 1, or {"max_length": N, "unit": "tokens"|"words"|"chars", "mode": "max"|"target"} '
    "(also as a JSON string)"
)


def parse_length_label(label) -> tuple[int, str, str]:
    if isinstance(label, str):
        text = label.strip()
        try:
            label = json.loads(text)
        except ValueError as e:
            raise ValueError(f"max_length label {text[:60]!r} is not a number or JSON object") from e
    unit, mode = "tokens", "max"
    if isinstance(label, dict):
        unit = str(label.get("unit") or "tokens").lower()
        mode = str(label.get("mode") or "max").lower()
        label = label.get("max_length", label.get("target"))
    # N below 1 truncates to 0, and the score divides by N.
    if not is_number(label) or not math.isfinite(label) or label < 1:
        shown = repr(label) if is_number(label) else kind(label)
        raise ValueError(f"max_length label needs a length of at least 1, got {shown}")
    if unit not in _UNITS:
        raise ValueError(f"max_length unit {unit!r} is not one of {', '.join(_UNITS)}")
    if mode not in _MODES:
        raise ValueError(f"max_length mode {mode!r} is not one of {', '.join(_MODES)}")
    return int(label), unit, mode


@register(
    "max_length",
    description="1 within a length budget (label N tokens), falling linearly to 0 at 2N",
    in_process=True,
    label_types=LABEL_TYPES,
    check_label=from_parser(parse_length_label),
)
def max_length_reward(completion: str, ground_truth, token_ids: list[int] | None = None) -> RewardResult:
    limit, unit, mode = parse_length_label(ground_truth)
    completion = completion or ""
    counted = unit
    if unit == "tokens" and token_ids is not None:
        length = len(token_ids)
    elif unit == "chars":
        length = len(completion)
    else:
        length = len(completion.split())
        counted = "words" if unit == "words" else "words (no token_ids given)"
    if mode == "max":
        score = 1.0 if length <= limit else max(0.0, 1.0 - (length - limit) / limit)
    else:
        score = max(0.0, 1.0 - abs(length - limit) / limit)
    return RewardResult(score, {"length": length, "unit": counted, "limit": limit})
