"""``string_match`` and ``f1``: SQuAD-style answer normalisation, exact match and token F1.

Normalisation (SQuAD v1.1 evaluation): lower-case, drop punctuation, drop the articles a/an/the,
collapse whitespace. The label is one acceptable answer (a string) or several (a list of strings, or
a JSON list in a string; numbers are compared as their text); the score is the best over them. An
empty answer, a dict or None is a label error, not an answer: an empty label would pay an empty
completion. Only the answer text is compared: what
follows the last ``</think>`` (see ``answer_text``).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter

from .answer_text import answer_text
from .labels import from_parser, is_number, json_container, kind
from .registry import RewardResult, register

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = str.maketrans({ch: " " for ch in string.punctuation})


def normalize_answer(text: str) -> str:
    text = str(text)
    if not text.isascii():
        # Unicode punctuation too (curly quotes, dashes), not only ASCII; skipped for plain ASCII (fast).
        text = unicodedata.normalize("NFKC", text)
        text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = text.lower().translate(_ASCII_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


LABEL_TYPES = "an answer string (or number), or a non-empty list of them (or a JSON list in a string)"


def _one_answer(value, where: str = "") -> str:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"expected a non-empty answer string{where}, got an empty string")
        if isinstance(json_container(value), dict):  # an object that travelled as JSON text
            raise ValueError(f"expected an answer string{where}, got a JSON object")
        if not normalize_answer(value):
            # e.g. "A" or "the": SQuAD normalisation drops articles and punctuation, so an empty
            # completion would match this label and score full marks.
            raise ValueError(
                f"answer {value[:40]!r}{where} normalises to nothing (articles and punctuation are "
                "dropped), so an empty answer would match it"
            )
        return value
    if is_number(value):
        return str(value)
    raise ValueError(f"expected an answer string{where}, got {kind(value)}")


def _answer_list(values) -> list[str]:
    if not values:
        raise ValueError("expected an answer string or a list of them, got an empty list")
    return [_one_answer(v, f" in list item {i + 1}") for i, v in enumerate(values)]


def gold_answers(label) -> list[str]:
    """A label as a list of acceptable answers; ValueError (the reason) for one that is not."""
    if isinstance(label, (list, tuple)):
        return _answer_list(label)
    if isinstance(label, str):
        stripped = label.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return _answer_list(parsed)
    return [_one_answer(label)]


def token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # SQuAD convention: two empty answers match; one empty answer scores 0.
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@register(
    "string_match",
    description="normalised exact match (lower-case, no punctuation/articles/extra spaces)",
    in_process=True,
    label_types=LABEL_TYPES,
    check_label=from_parser(gold_answers),
)
def string_match_reward(completion: str, ground_truth) -> RewardResult:
    pred = normalize_answer(answer_text(completion))
    golds = gold_answers(ground_truth)
    hit = any(pred == normalize_answer(g) for g in golds)
    return RewardResult(1.0 if hit else 0.0, {"normalized": pred[:200]})


@register(
    "f1",
    description="SQuAD token F1 between the answer and the best-matching label answer",
    in_process=True,
    label_types=LABEL_TYPES,
    check_label=from_parser(gold_answers),
)
def f1_reward(completion: str, ground_truth) -> RewardResult:
    pred = answer_text(completion)
    return RewardResult(max(token_f1(pred, g) for g in gold_answers(ground_truth)), {})
