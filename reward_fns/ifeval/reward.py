"""``ifeval`` / ``ifeval_loose``: score = fraction of the label's constraints the response follows.

Strict mode checks the answer text (after the last ``</think>``) as is. Loose mode is IFEval's: a
constraint counts as followed when any of eight variants of the response follows it (as is, without
its first line, without its last line, without both; each also with every ``*`` removed).
"""

from __future__ import annotations

from ..answer_text import answer_text
from ..registry import RewardResult, register
from .labels import LABEL_TYPES, Constraint, label_reason, params, parse_if_label, prompt_params
from .text_units import warmup


def _call(c: Constraint, response: str, prompt: str | None) -> bool:
    kwargs = dict(c.kwargs)
    for p in prompt_params(c.check):
        if p not in kwargs and prompt:
            kwargs[p] = prompt
    missing = [p for p in params(c.check) if p not in kwargs]
    if missing:
        raise ValueError(f"{c.name}: label is missing {', '.join(missing)}")
    return bool(c.check(response, **kwargs))


def _loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    variants = [response, first, last, both]
    return variants + [v.replace("*", "") for v in variants]


def score_constraints(completion: str, ground_truth, prompt: str | None, loose: bool) -> RewardResult:
    constraints = parse_if_label(ground_truth)
    response = answer_text(completion)
    variants = _loose_variants(response) if loose else [response]
    followed = []
    for c in constraints:
        followed.append(any(v.strip() and _call(c, v, prompt) for v in variants))
    return RewardResult(
        sum(followed) / len(followed), {"constraints": [c.name for c in constraints], "followed": followed}
    )


@register(
    "ifeval",
    description="instruction following: fraction of the label's constraints met (Tülu 3 "
    "func_name or IFEval instruction_id labels)",
    in_process=True,
    warmup=warmup,
    label_types=LABEL_TYPES,
    check_label=label_reason,
)
def ifeval_reward(completion: str, ground_truth, prompt: str | None = None) -> RewardResult:
    return score_constraints(completion, ground_truth, prompt, loose=False)


@register(
    "ifeval_loose",
    description="ifeval with IFEval's loose matching (first/last line and '*' removed variants)",
    in_process=True,
    warmup=warmup,
    label_types=LABEL_TYPES,
    check_label=label_reason,
)
def ifeval_loose_reward(completion: str, ground_truth, prompt: str | None = None) -> RewardResult:
    return score_constraints(completion, ground_truth, prompt, loose=True)
