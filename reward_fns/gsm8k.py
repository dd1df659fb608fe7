"""``gsm8k``: the last number in the answer equals the label's number.

Rules (Tülu 3): thousands separators are dropped (``1,234`` -> 1234, but ``1,2,3`` stays a list), the
last number in the answer text is taken (``$1,234.`` -> 1234, ``1,234.00`` -> 1234.0, ``-7`` -> -7; a
trailing period is punctuation, not a decimal point), and it is compared numerically with the label
(``"72"``, ``72``, ``"#### 72"`` or ``"$1,000"``). A label must be a number: an int/float, or a string
that is one once thousands separators, a ``$`` and a trailing period are dropped (after GSM8K's
``####`` when present); anything else (a dict, ``"forty-two"``, ``"1/2"``) is a label error, never a
silent 0. A hyphen counts as a minus sign only when it does not
follow a letter or digit, so ``pages 3-5`` ends in 5, not -5.
"""

from __future__ import annotations

import math
import re

from .answer_text import answer_text, last_match
from .labels import from_parser, is_number, json_container, kind
from .registry import RewardResult, register

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"(?:(?<![0-9A-Za-z_])-)?\d+(?:\.\d+)?")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\uff0d": "-"})
_LABEL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
LABEL_TYPES = 'a number: int, float, or a string holding only one ("72", "1,234", "$10", "... #### 72")'


def last_number(text: str) -> str | None:
    """The last number in ``text`` after dropping thousands separators, as a string, or None."""
    text = _THOUSANDS.sub("", text.translate(_MINUS_SIGNS))
    last = last_match(_NUMBER, text)
    return last.group(0) if last is not None else None


def label_number(label) -> float:
    """The label's number; GSM8K's own ``... #### N`` answer format is accepted too. Raises ValueError
    (the reason) for anything that is not a number: comparing the answer against the last number
    found in, say, a dict's repr would score silently and wrongly."""
    if is_number(label):
        if not math.isfinite(label):
            raise ValueError(f"expected a finite number, got {label}")
        return float(label)
    if isinstance(label, (list, tuple)) and len(label) == 1:
        return label_number(label[0])
    if not isinstance(label, str):
        raise ValueError(f"expected a number, got {kind(label)}")
    decoded = json_container(label)
    if isinstance(decoded, list) and len(decoded) == 1:
        return label_number(decoded[0])  # a one-element list that travelled as JSON text
    text = label.rsplit("####", 1)[-1] if "####" in label else label
    text = _THOUSANDS.sub("", text.translate(_MINUS_SIGNS)).replace("$", "").strip().rstrip(".").strip()
    if not _LABEL.fullmatch(text):
        if decoded is not None:
            raise ValueError(f"expected a number, got {kind(label)}")
        why = "which holds no number" if last_number(text) is None else "which is not a single number"
        raise ValueError(f"expected a number, got {kind(label)}, {why}")
    return float(text)


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@register(
    "gsm8k",
    description="GSM8K: last number in the answer (commas dropped) equals the label numerically",
    in_process=True,
    label_types=LABEL_TYPES,
    check_label=from_parser(label_number),
)
def gsm8k_reward(completion: str, ground_truth) -> RewardResult:
    gold = label_number(ground_truth)
    found = last_number(answer_text(completion))
    if found is None:
        return RewardResult(0.0, {"extracted": None})
    return RewardResult(1.0 if numbers_equal(float(found), gold) else 0.0, {"extracted": found})
