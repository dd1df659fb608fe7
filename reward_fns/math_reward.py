"""``math`` (flexible) and ``strict_math``: MATH answers checked by normalisation, then symbolically.

1. The answer is extracted (see ``math_extract``): flexible = last ``\\boxed{}``, else the Minerva
   "final answer is X", else the last ``$...$``, else the whole answer text when it is short (compared
   as a string only, step 2); strict =
   only "Final Answer: The final answer is X. I hope it is correct.".
2. ``fast_equal`` (``math_normalize``) settles equal strings and pairs of plain numbers without any
   symbolic engine. This is the fast path the runner calls in-process.
3. What is left goes to ``math_verify`` (parse + verify, so ``\\frac{1}{2}``, ``1/2``, ``0.5``,
   ``\\dfrac12`` and ``2x+1`` / ``1+2x`` are equal). ``math_verify`` enforces its own time limit with
   ``signal.alarm``, which only works in a process's main thread, so it is called with the limit
   disabled (``parsing_timeout=None``, ``timeout_seconds=None``) and the runner enforces the time
   limit by running this step in a worker process it can kill.

The label may be a non-empty string, a number, or a non-empty list of those (any match scores 1); a
JSON list of strings in a string is such a list (``"[1, 2]"``, with numbers, stays an interval).
Anything else (a dict, None, an empty string) is a label error: its ``str()`` would be compared as
if it were an answer, a silent 0.
"""

from __future__ import annotations

import functools
import logging
import math

from .answer_text import answer_text
from .labels import from_parser, is_number, json_container, kind
from .math_extract import MAX_ANSWER_CHARS, extract_math_answer
from .math_normalize import fast_equal
from .registry import RewardResult, register

# The whole answer is used as the answer only when it is this short (a bare "42").
_WHOLE_TEXT_MAX = 40
LABEL_TYPES = "an answer: a non-empty string or a number, or a non-empty list of them"


def _one_label(label, where: str = "") -> str:
    if isinstance(label, str):
        if not label.strip():
            raise ValueError(f"expected a non-empty answer string{where}, got an empty string")
        if isinstance(json_container(label), dict):  # an object that travelled as JSON text
            raise ValueError(f"expected an answer string or number{where}, got a JSON object")
        return label
    if is_number(label):
        if not math.isfinite(label):
            raise ValueError(f"expected a finite number{where}, got {label}")
        return str(label)
    raise ValueError(f"expected an answer string or number{where}, got {kind(label)}")


def _labels(ground_truth) -> list[str]:
    """The acceptable answers; ValueError (the reason) for a label that is not one."""
    if isinstance(ground_truth, str):
        decoded = json_container(ground_truth)
        # A list of answers that travelled as JSON text (open_instruct stores labels as text). Only a
        # list of strings: "[1, 2]" is an interval, an answer in its own right.
        if isinstance(decoded, list) and decoded and all(isinstance(g, str) for g in decoded):
            ground_truth = decoded
    if isinstance(ground_truth, (list, tuple)):
        if not ground_truth:
            raise ValueError("expected an answer or a list of answers, got an empty list")
        return [_one_label(g, f" in list item {i + 1}") for i, g in enumerate(ground_truth)]
    return [_one_label(ground_truth)]


@functools.lru_cache(maxsize=1)
def _math_verify():
    # Imported lazily (sympy, antlr: ~0.3 s) so that `import reward_fns` stays fast.
    import math_verify

    # It logs a warning on every call made with the timeout disabled; the runner owns timeouts.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("math_verify"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return math_verify


@functools.lru_cache(maxsize=8192)
def _parse(text: str):
    mv = _math_verify()
    return mv.parse(f"${text}$", parsing_timeout=None)


@functools.lru_cache(maxsize=8192)
def symbolic_equal(pred: str, gold: str) -> bool:
    """math_verify equivalence of two answer strings (no time limit: call it where it can be killed)."""
    mv = _math_verify()
    g, p = _parse(gold), _parse(pred)
    if not g or not p:
        return False
    return bool(mv.verify(g, p, timeout_seconds=None))


def warmup() -> None:
    """Import math_verify and run one check, so the first sample in a worker is not slow."""
    symbolic_equal("\\frac{1}{2}", "0.5")


def _candidates(completion: str, strict: bool) -> tuple[str | None, str]:
    text = answer_text(completion)
    answer, how = extract_math_answer(text, strict=strict)
    if answer is None and not strict:
        whole = text.strip()
        if whole and len(whole) <= _WHOLE_TEXT_MAX:
            answer, how = whole, "whole"
    if answer is not None and len(answer) > MAX_ANSWER_CHARS:
        return None, "too_long"
    return answer, how


def _decide_fast(completion: str, ground_truth, strict: bool):
    """(result or None if undecided, answer, how)."""
    golds = _labels(ground_truth)  # a bad label is an error even when the completion has no answer
    answer, how = _candidates(completion, strict)
    if answer is None:
        return RewardResult(0.0, {"extracted": None, "how": how}), None, how
    undecided = False
    for gold in golds:
        verdict = fast_equal(answer, gold)
        if verdict:
            return RewardResult(1.0, {"extracted": answer, "how": how, "by": "string"}), answer, how
        if verdict is None:
            undecided = True
    if not undecided or how == "whole":
        # A bare completion is compared as a string only: math_verify would pull any number out of a
        # sentence ("probably 15 or so" -> 15).
        return RewardResult(0.0, {"extracted": answer, "how": how, "by": "string"}), answer, how
    return None, answer, how


def _score(completion: str, ground_truth, strict: bool) -> RewardResult:
    result, answer, how = _decide_fast(completion, ground_truth, strict)
    if result is not None:
        return result
    # math_verify gets the raw strings: it has its own LaTeX normalisation, and ours (built for string
    # comparison) may merge tokens it would read differently.
    for gold in _labels(ground_truth):
        if symbolic_equal(answer.strip(), gold.strip()):
            return RewardResult(1.0, {"extracted": answer, "how": how, "by": "symbolic"})
    return RewardResult(0.0, {"extracted": answer, "how": how, "by": "symbolic"})


def math_fast_path(completion: str, ground_truth) -> RewardResult | None:
    return _decide_fast(completion, ground_truth, strict=False)[0]


def strict_math_fast_path(completion: str, ground_truth) -> RewardResult | None:
    return _decide_fast(completion, ground_truth, strict=True)[0]


@register(
    "math",
    description="MATH: last \\boxed{} / Minerva 'final answer is' / last $..$, normalised or "
    "symbolically equal (math-verify) to the label",
    fast_path=math_fast_path,
    warmup=warmup,
    label_types=LABEL_TYPES,
    check_label=from_parser(_labels),
)
def math_reward(completion: str, ground_truth) -> RewardResult:
    return _score(completion, ground_truth, strict=False)


@register(
    "strict_math",
    description="MATH, answer only from 'Final Answer: The final answer is X. I hope it is correct.'",
    fast_path=strict_math_fast_path,
    warmup=warmup,
    label_types=LABEL_TYPES,
    check_label=from_parser(_labels),
)
def strict_math_reward(completion: str, ground_truth) -> RewardResult:
    return _score(completion, ground_truth, strict=True)
