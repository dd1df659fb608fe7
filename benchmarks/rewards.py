"""Reward throughput: completions scored per second by each built-in verifier, on one core.

    python benchmarks/rewards.py [--n 2000] [--repeats 3]

Single process, pinned to one CPU, calling each registered verifier directly (what a worker or the
in-process fast path does). Completions are synthetic but shaped like real rollouts: multi-sentence
chain-of-thought with numbers and thousands separators for GSM8K; MATH solutions whose final answers
are right in a different form (``0.5`` for ``\\frac{1}{2}``, ``1+2x`` for ``2x+1``), wrong, in the
Minerva sentence, only in ``$...$``, or missing; IF responses of a few sentences against Tülu
``func_name`` and IFEval ``instruction_id`` labels; each set includes failures (wrong answers, no
answer, truncated ``<think>``). As in GRPO, several samples share a prompt (label) and many repeat an
answer. Throughput is completions per CPU-second of this process (``time.process_time``): on a
shared machine the wall clock also counts time spent waiting for the core, so it is printed alongside
but not compared with the target. Each verifier keeps its best of ``repeats`` timings, each from cold
caches.
Prints a markdown table; ``run()`` returns rows for benchmarks/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGETS = {"gsm8k": 5000, "string_match": 5000, "ifeval": 5000, "math": 500}
SAMPLES_PER_PROMPT = 8

_FILLER = (
    "First we work out the pieces. ",
    "Then we add them together. ",
    "Let me double-check the arithmetic. ",
    "So far so good. ",
    "Now combine the results. ",
)


def _gsm8k_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    rows = []
    while len(rows) < n:
        a, b, c = rng.randint(12, 9_000), rng.randint(2, 60), rng.randint(100, 20_000)
        answer = a * b + c
        label = str(answer)
        for _ in range(SAMPLES_PER_PROMPT):
            steps = (
                f"Each box holds {a:,} items and there are {b} boxes, so {a:,} x {b} = {a * b:,}. "
                + "".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 6)))
                + f"Adding the {c:,} loose items gives {a * b:,} + {c:,} = {answer:,}. "
            )
            r = rng.random()
            if r < 0.55:
                text = steps + f"The answer is ${answer:,}."
            elif r < 0.7:
                text = steps + f"#### {answer}"
            elif r < 0.88:
                text = steps + f"The answer is {answer + rng.choice([-10, -1, 1, 100]):,}."
            elif r < 0.95:
                text = "<think>" + steps + "Hmm, let me reconsider"
            else:
                text = "I am not sure how to solve this problem."
            rows.append((text, label))
    return rows[:n]


# (label, right answers in other forms, wrong answers)
_MATH_ANSWERS = [
    ("\\frac{1}{2}", ["0.5", "\\dfrac12", "1/2", "\\frac{1}{2}"], ["\\frac{1}{3}", "2"]),
    ("2x+1", ["1+2x", "2x+1", "2x + 1"], ["2x-1", "x+1"]),
    ("2\\sqrt{2}", ["\\sqrt{8}", "2\\sqrt{2}", "2\\sqrt2"], ["\\sqrt{2}", "4"]),
    ("(1,2]", ["(1, 2]", "\\left(1,2\\right]"], ["[1,2]", "(1,2)"]),
    ("\\frac{\\pi}{4}", ["\\frac{\\pi}{4}", "\\pi/4"], ["\\frac{\\pi}{2}", "0.785"]),
    ("12", ["12", "12.0", "12 \\text{ cm}"], ["13", "-12"]),
    ("1000", ["1,000", "1000"], ["100", "10000"]),
    ("\\frac{5}{6}", ["\\frac{5}{6}", "5/6", "\\dfrac{5}{6}"], ["\\frac{6}{5}", "0.83"]),
    ("x^2+2x+1", ["(x+1)^2", "x^2+2x+1"], ["x^2+1", "(x-1)^2"]),
    ("(3,-1)", ["(3, -1)", "\\left(3,-1\\right)"], ["(-1,3)", "(3,1)"]),
]


def _math_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    rows = []
    while len(rows) < n:
        label, right, wrong = rng.choice(_MATH_ANSWERS)
        for _ in range(SAMPLES_PER_PROMPT):
            work = (
                "We start from the given equation and simplify both sides. "
                + "".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 5)))
                + f"Substituting $x = {rng.randint(1, 9)}$ checks out, and $y^2 = {rng.randint(2, 99)}$. "
            )
            answer = rng.choice(right) if rng.random() < 0.6 else rng.choice(wrong)
            r = rng.random()
            if r < 0.6:
                text = work + f"Therefore the answer is $\\boxed{{{answer}}}$."
            elif r < 0.75:
                text = work + f"Final Answer: The final answer is ${answer}$. I hope it is correct."
            elif r < 0.85:
                text = work + f"So we get ${answer}$."
            elif r < 0.93:
                text = "<think>" + work + "wait, that is not right"
            else:
                text = work + "I could not finish this one."
            rows.append((text, label))
    return rows[:n]


_SENTENCES = [
    "The river bends slowly past the old mill.",
    "Children play near the water in summer.",
    "In winter the banks freeze and the town grows quiet.",
    "Fishermen come early, before the mist lifts.",
    "THE BRIDGE WAS BUILT A CENTURY AGO.",
    "Everyone agrees it is the heart of the valley.",
]


def _tulu(func: str, **kw) -> str:
    base = {
        "func_name": func,
        "N": None,
        "quantifier": None,
        "keyword_list": None,
        "word": None,
        "letter": None,
        "end_phrase": None,
        "forbidden_words": None,
        "postscript_marker": None,
    }
    base.update(kw)
    return json.dumps(base)


def _if_labels() -> list[str]:
    def ids(*pairs):
        return json.dumps({"instruction_id": [p[0] for p in pairs], "kwargs": [p[1] for p in pairs]})

    return [
        _tulu("validate_lowercase"),
        _tulu("validate_uppercase"),
        _tulu("validate_no_commas"),
        _tulu("verify_keywords", keyword_list=["river", "bridge"]),
        _tulu("validate_word_constraint", N=40, quantifier="at least"),
        _tulu("verify_sentence_constraint", N=5, quantifier="at most"),
        _tulu("validate_end", end_phrase="Any questions?"),
        _tulu("verify_bullet_points", N=3),
        _tulu("validate_title"),
        _tulu("validate_highlighted_sections", N=2),
        _tulu("verify_paragraph_count", N=2),
        _tulu("validate_placeholders", N=1),
        _tulu("validate_quotation"),
        _tulu("verify_postscript", postscript_marker="P.S."),
        _tulu("validate_response_language", language="en"),
        _tulu("verify_keyword_frequency", word="river", N=2),
        _tulu("validate_forbidden_words", forbidden_words=["car"]),
        _tulu("verify_letter_frequency", letter="z", N=0),
        _tulu("validate_two_responses"),
        _tulu("validate_json_format"),
        _tulu("validate_frequency_capital_words", N=3, quantifier="at least"),
        _tulu("validate_sections", N=2, section_splitter="Section"),
        _tulu("validate_paragraphs", N=2, first_word="the", i=1),
        ids(
            ("punctuation:no_comma", {}),
            ("length_constraints:number_words", {"num_words": 30, "relation": "at least"}),
        ),
        ids(
            ("change_case:english_lowercase", {}),
        ),
        ids(("detectable_format:title", {}), ("startend:end_checker", {"end_phrase": "Any questions?"})),
        ids(
            ("keywords:existence", {"keywords": ["mill"]}),
            ("keywords:forbidden_words", {"forbidden_words": ["car"]}),
        ),
        ids(
            ("length_constraints:number_sentences", {"num_sentences": 4, "relation": "less than"}),
        ),
        ids(
            ("detectable_format:number_bullet_lists", {"num_bullets": 3}),
            ("detectable_content:postscript", {"postscript_marker": "P.S."}),
        ),
        ids(
            ("language:response_language", {"language": "en"}),
        ),
    ]


def _if_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    labels = _if_labels()
    rows = []
    while len(rows) < n:
        label = rng.choice(labels)
        for _ in range(SAMPLES_PER_PROMPT):
            body = " ".join(rng.choice(_SENTENCES) for _ in range(rng.randint(3, 8)))
            r = rng.random()
            if r < 0.2:
                text = body.lower()
            elif r < 0.3:
                text = "<<The River>>\n\n" + body + "\n* one\n* two\n* three\n\nP.S. Any questions?"
            elif r < 0.4:
                text = f'"{body}"'
            elif r < 0.5:
                text = "Section 1\n" + body + "\n\nSection 2\n*highlighted* and *this too*. Any questions?"
            elif r < 0.55:
                text = "<think>" + body
            else:
                text = body + (" Any questions?" if rng.random() < 0.5 else "")
            rows.append((text, label))
    return rows[:n]


def _string_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    golds = ["Paris", "the Eiffel Tower", "George Washington", "photosynthesis", "1969", "Pacific Ocean"]
    rows = []
    for _ in range(n):
        gold = rng.choice(golds)
        r = rng.random()
        text = gold if r < 0.4 else (f"The answer is {gold}." if r < 0.6 else rng.choice(golds).upper() + "!")
        rows.append((text, gold))
    return rows


def _throughput(fn, rows: list[tuple[str, str]], repeats: int) -> tuple[float, float]:
    """(completions per CPU-second, completions per wall-second), best of ``repeats``."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        _clear_caches()
        wall, cpu = time.perf_counter(), time.process_time()
        for completion, label in rows:
            fn(completion, label)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return len(rows) / best_cpu, len(rows) / best_wall


def _clear_caches() -> None:
    """Every timing starts from cold caches (the label/answer caches only help within a run)."""
    from reward_fns.ifeval import labels, text_units
    from reward_fns.math_reward import _parse, symbolic_equal

    for f in (_parse, symbolic_equal, labels._constraints_cached, text_units.detect_language):
        f.cache_clear()


def run(n: int = 2000, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Rows (stage, metric, value, unit, target, ok) for benchmarks/run_all.py."""
    from reward_fns import get_reward
    from reward_fns.ifeval.text_units import warmup as warm_langdetect
    from reward_fns.math_reward import warmup as warm_math

    warm_math()
    warm_langdetect()
    rng = random.Random(seed)
    sets = {
        "gsm8k": _gsm8k_rows(rng, n),
        "math": _math_rows(rng, n),
        "ifeval": _if_rows(rng, n),
        "string_match": _string_rows(rng, n),
    }
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    rows = []
    try:
        if affinity:
            os.sched_setaffinity(0, {min(affinity)})  # one core
        for name, data in sets.items():
            value, wall = _throughput(get_reward(name), data, repeats)
            target = TARGETS[name]
            rows.append(
                {
                    "stage": "rewards",
                    "metric": f"{name} completions/s (1 core)",
                    "value": value,
                    "unit": "completions/s",
                    "target": f"> {target:,}",
                    "ok": value > target,
                    "wall_value": wall,
                }
            )
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| verifier | completions/s (per CPU-second, 1 core) | wall-clock completions/s | target | ok? |")
    print("|---|---|---|---|---|")
    for r in rows:
        name = r["metric"].split(" ")[0]
        print(
            f"| {name} | {r['value']:,.0f} | {r['wall_value']:,.0f} | {r['target']} | {'yes' if r['ok'] else 'NO'} |"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="completions per verifier")
    ap.add_argument("--repeats", type=int, default=3, help="timings per verifier (best is kept)")
    args = ap.parse_args()
    print_table(run(args.n, args.repeats))
