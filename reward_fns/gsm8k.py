"""``gsm8k``: the last number in the answer equals the label's number.

Rules (Tülu 3): thousands separators are dropped (``1,234`` -> 1234, but ``1,2,3`` stays a list), the
last number in the answer text is taken (``$1,234.`` -> 1234, ``1,234.00`` -> 1234.0, ``-7`` -> -7; a
trailing period is punctuation, not a decimal point), and it is compared numerically with the label
(``"72"``, ``72``, ``"#### 72"`` or ``"$1,000"``). A hyphen counts as a minus sign only when it does not
follow a letter or digit, so ``pages 3-5`` ends in 5, not -5.
"""

from __future__ import annotations

import math
import re

from .answer_text import answer_text, last_match
from .registry import RewardResult, register

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"(?:(?<![0-9A-Za-z_])-)?\d+(?:\.\d+)?")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\uff0d": "-"})


def last_number(text: str) -> str | None:
    """The last number in ``text`` after dropping thousands separators, as a string, or None."""
    text = _THOUSANDS.sub("", text.translate(_MINUS_SIGNS))
    last = last_match(_NUMBER, text)
    return last.group(0) if last is not None else None


def label_number(label) -> float:
    """The label's number; GSM8K's own ``#### N`` answer format is accepted too."""
    if isinstance(label, bool):
        raise ValueError("gsm8k label must be a number, got a boolean")
    if isinstance(label, (int, float)):
        return float(label)
    if isinstance(label, (list, tuple)) and len(label) == 1:
        return label_number(label[0])
    text = str(label)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    found = last_number(text)
    if found is None:
        raise ValueError(f"gsm8k label {str(label)[:60]!r} holds no number")
    return float(found)


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@register(
    "gsm8k",
    description="GSM8K: last number in the answer (commas dropped) equals the label numerically",
    in_process=True,
)
def gsm8k_reward(completion: str, ground_truth) -> RewardResult:
    gold = label_number(ground_truth)
    found = last_number(answer_text(completion))
    if found is None:
        return RewardResult(0.0, {"extracted": None})
    return RewardResult(1.0 if numbers_equal(float(found), gold) else 0.0, {"extracted": found})
