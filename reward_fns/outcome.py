"""What a reward call produced, after checking it: a score, or one of the counted failure kinds.

Every failure scores 0 and is counted under its kind, so a broken reward shows up in the metrics
instead of as a silent run of zeros:

* ``error``    the reward raised (or its worker process died while scoring this sample)
* ``timeout``  it ran past its time limit and its worker was killed
* ``junk``     it returned something that is not a finite number (a string, a list, NaN, inf ...)
* ``no_score`` it returned None: TRL's convention for "this reward does not apply to this sample"
* ``label_error`` the sample's label is not one the verifier accepts (``RewardSpec.label_problem``);
  the reward is not called: the problem is the data, not the completion
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .registry import RewardResult

OK, ERROR, TIMEOUT, JUNK, NO_SCORE = "ok", "error", "timeout", "junk", "no_score"
LABEL_ERROR = "label_error"


@dataclass
class Outcome:
    status: str
    score: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    seconds: float = 0.0


def _as_number(value: Any) -> float | None:
    if isinstance(value, numbers.Real):  # int, float, bool, numpy scalars
        return float(value)
    item = getattr(value, "item", None)  # 0-d numpy arrays / torch tensors
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            inner = item()
        except Exception:  # noqa: BLE001
            return None
        return float(inner) if isinstance(inner, numbers.Real) else None
    return None


def interpret(value: Any, seconds: float = 0.0) -> Outcome:
    """Turn a reward's raw return value into an Outcome."""
    metadata: dict[str, Any] = {}
    if isinstance(value, RewardResult):
        metadata = value.metadata if isinstance(value.metadata, dict) else {"metadata": value.metadata}
        value = value.score
    if value is None:
        return Outcome(NO_SCORE, 0.0, metadata, None, seconds)
    number = _as_number(value)
    if number is None:
        return Outcome(
            JUNK,
            0.0,
            metadata,
            f"returned {type(value).__name__}, not a number: {_short(repr(value))}",
            seconds,
        )
    if not math.isfinite(number):
        return Outcome(JUNK, 0.0, metadata, f"returned {number}", seconds)
    return Outcome(OK, number, metadata, None, seconds)


def error_outcome(exc: BaseException, seconds: float = 0.0) -> Outcome:
    text = _short(str(exc))
    return Outcome(ERROR, 0.0, {}, f"{type(exc).__name__}: {text}" if text else type(exc).__name__, seconds)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
