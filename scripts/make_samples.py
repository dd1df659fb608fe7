"""Writes the sample data under data_mixes/samples/ deterministically (same output every run).

The toy task of the tiny recipe (docs/data.md): two-digit addition with a one-line worked
solution and a GSM8K-style final answer,

    What is 47 + 85?  ->  7+5=12, 4+8+1=13. The answer is 132.

200 held-out problems are shared by all *_eval files and appear in no *_train file, so every
stage is measured on the same prompts. Also writes a TRL-style preference sample and a small
mixed RLVR sample (gsm8k, MATH, ifeval labels) to exercise several verifiers.

    python scripts/make_samples.py [--out data_mixes/samples]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1234
N_EVAL, N_SFT, N_PREF, N_RLVR = 200, 6000, 2000, 2000


def question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def solution(a: int, b: int) -> str:
    units = a % 10 + b % 10
    carry = units // 10
    tens = a // 10 + b // 10 + carry
    tens_step = f"{a // 10}+{b // 10}+1={tens}" if carry else f"{a // 10}+{b // 10}={tens}"
    return f"{a % 10}+{b % 10}={units}, {tens_step}. The answer is {a + b}."


def wrong_solution(a: int, b: int, rng: random.Random) -> str:
    """A plausible mistake: the carry dropped (when there is one) or an off-by-one answer."""
    units = a % 10 + b % 10
    if units >= 10 and rng.random() < 0.6:
        tens = a // 10 + b // 10
        return (
            f"{a % 10}+{b % 10}={units}, {a // 10}+{b // 10}={tens}. The answer is {tens * 10 + units % 10}."
        )
    good = solution(a, b)
    answer = a + b + rng.choice([-1, 1])
    return good.rsplit("The answer is", 1)[0] + f"The answer is {answer}."


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def sft_row(a, b):
    return {"messages": [user(question(a, b)), assistant(solution(a, b))]}


def preference_row(a, b, rng):
    prompt = [user(question(a, b))]
    return {
        "chosen": prompt + [assistant(solution(a, b))],
        "rejected": prompt + [assistant(wrong_solution(a, b, rng))],
    }


def rlvr_row(a, b):
    return {"messages": [user(question(a, b))], "ground_truth": str(a + b), "dataset": "gsm8k"}


def _if_label(func_name: str, **kwargs) -> str:
    # Tülu 3 IF labels are JSON text listing every argument, null where it does not apply.
    args = {
        "N": None,
        "quantifier": None,
        "keyword_list": None,
        "word": None,
        "letter": None,
        "end_phrase": None,
        "forbidden_words": None,
        "postscript_marker": None,
    }
    args.update(kwargs)
    return json.dumps({"func_name": func_name, **args})


MIXED_RLVR = [
    (
        "gsm8k",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "72",
    ),
    (
        "gsm8k",
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        "10",
    ),
    ("gsm8k", "A farm has 1,250 chickens and sells 250 of them. How many chickens are left?", "1000"),
    ("gsm8k", "Tom reads 12 pages a day for 7 days. How many pages does he read?", "84"),
    ("MATH", "What is $\\frac{1}{2} + \\frac{1}{3}$? Put the final answer in \\boxed{}.", "\\frac{5}{6}"),
    ("MATH", "Solve for $x$: $2x + 3 = 11$.", "4"),
    ("MATH", "What is the value of $\\sqrt{49} + 2^3$?", "15"),
    ("MATH", "Simplify $(x+1)^2 - x^2$.", "2x+1"),
    (
        "ifeval",
        "Write a short note to a friend about the weather. Your entire response should be in English, "
        "and in all lowercase letters. No capital letters are allowed.",
        _if_label("validate_lowercase"),
    ),
    (
        "ifeval",
        "Describe a river in at least 30 words.",
        _if_label("validate_word_constraint", N=30, quantifier="at least"),
    ),
    (
        "ifeval",
        "Write a limerick about a cat. Finish your response with this exact phrase: Is there anything "
        "else I can help with?",
        _if_label("validate_end", end_phrase="Is there anything else I can help with?"),
    ),
    (
        "ifeval",
        "List three fruits. Include the keywords apple and orange in the response.",
        _if_label("verify_keywords", keyword_list=["apple", "orange"]),
    ),
]

TRL_PREFERENCE = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Lyon."),
    ("Name a primary color.", "Red is a primary color.", "Green is a primary color of paint."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
    ("What is 12 + 30?", "2+0=2, 1+3=4. The answer is 42.", "2+0=2, 1+3=4. The answer is 43."),
    ("Spell 'cat' backwards.", "tac", "cta"),
    (
        "Is water wet?",
        "Water makes things wet; whether water itself is wet depends on the definition.",
        "No.",
    ),
    ("Give a synonym of 'happy'.", "Joyful.", "Sad."),
    ("What comes after Monday?", "Tuesday comes after Monday.", "Sunday comes after Monday."),
]


def write_jsonl(path: Path, rows) -> int:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def make(out: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    held_out, pool = pairs[:N_EVAL], pairs[N_EVAL:]
    sft = pool[:N_SFT]
    pref = rng.sample(pool, N_PREF)
    rlvr = rng.sample(pool, N_RLVR)

    out.mkdir(parents=True, exist_ok=True)
    sizes = {
        "sft_train.jsonl": write_jsonl(out / "sft_train.jsonl", [sft_row(a, b) for a, b in sft]),
        "sft_eval.jsonl": write_jsonl(out / "sft_eval.jsonl", [sft_row(a, b) for a, b in held_out]),
        "preference_train.jsonl": write_jsonl(
            out / "preference_train.jsonl", [preference_row(a, b, rng) for a, b in pref]
        ),
        "preference_eval.jsonl": write_jsonl(
            out / "preference_eval.jsonl", [preference_row(a, b, rng) for a, b in held_out]
        ),
        "rlvr_train.jsonl": write_jsonl(out / "rlvr_train.jsonl", [rlvr_row(a, b) for a, b in rlvr]),
        "rlvr_eval.jsonl": write_jsonl(out / "rlvr_eval.jsonl", [rlvr_row(a, b) for a, b in held_out]),
        "rlvr_mixed_sample.jsonl": write_jsonl(
            out / "rlvr_mixed_sample.jsonl",
            [{"messages": [user(q)], "ground_truth": gt, "dataset": ds} for ds, q, gt in MIXED_RLVR],
        ),
        "preference_trl_sample.jsonl": write_jsonl(
            out / "preference_trl_sample.jsonl",
            [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in TRL_PREFERENCE],
        ),
    }
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data_mixes" / "samples"))
    args = ap.parse_args()
    for name, n in make(Path(args.out)).items():
        print(f"{name}: {n} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
