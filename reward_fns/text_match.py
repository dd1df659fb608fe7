"""``string_match`` and ``f1``: SQuAD-style answer normalisation, exact match and token F1.

Normalisation (SQuAD v1.1 evaluation): lower-case, drop punctuation, drop the articles a/an/the,
collapse whitespace. The label is one acceptable answer (a string) or several (a list of strings, or
a JSON list in a string); the score is the best over them. Only the answer text is compared: what
follows the last ``</think>`` (see ``answer_text``).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter

from .answer_text import answer_text
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


def gold_answers(label) -> list[str]:
    """A label as a list of acceptable answers."""
    if isinstance(label, (list, tuple)):
        return [str(x) for x in label]
    if isinstance(label, str):
        stripped = label.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and parsed:
                return [str(x) for x in parsed]
        return [label]
    return [str(label)]


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
)
def string_match_reward(completion: str, ground_truth) -> RewardResult:
    pred = normalize_answer(answer_text(completion))
    golds = gold_answers(ground_truth)
    hit = any(pred == normalize_answer(g) for g in golds)
    return RewardResult(1.0 if hit else 0.0, {"normalized": pred[:200]})


@register(
    "f1", description="SQuAD token F1 between the answer and the best-matching label answer", in_process=True
)
def f1_reward(completion: str, ground_truth) -> RewardResult:
    pred = answer_text(completion)
    return RewardResult(max(token_f1(pred, g) for g in gold_answers(ground_truth)), {})
