"""``code``: run the completion's last ```python block against the label's tests, in the sandbox.

Label formats (a dict/list, or the same as a JSON or Python-literal string):

* ``["assert add(1, 2) == 3", "assert add(0, 0) == 0"]``: assertion tests; each is Python run after the
  solution, in its namespace; a test passes when it raises nothing.
* ``{"tests": [...assert strings...]}``: the same, with optional ``"all_or_nothing": true``.
* ``{"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}`` or ``[{"input": "1 2", "output": "3"}, ...]``:
  stdin/stdout tests; the solution runs once per input as a script (``__name__ == "__main__"``) and
  passes when its output matches (trailing whitespace on lines and trailing blank lines ignored;
  failing that, the same whitespace-separated tokens).
* any other string: one assertion test script.

Score = fraction of tests passed (or 0/1 with ``all_or_nothing``). No python block, a solution that
fails to run, or a run that is killed (time, output) scores 0 for the tests without a result. The
sandbox and its limits: ``reward_fns/sandbox`` and docs/rewards.md.
"""

from __future__ import annotations

import ast
import json
import re

from .answer_text import answer_text, last_match
from .registry import RewardResult, register
from .sandbox import SandboxLimits, run_python

DEFAULT_LIMITS = SandboxLimits(wall_s=8.0, cpu_s=4.0, per_test_timeout_s=2.0)

_BLOCK = re.compile(r"```(?:python3?|py)[^\S\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def last_python_block(text: str) -> str | None:
    found = last_match(_BLOCK, text)
    return found.group(1) if found is not None else None


def parse_code_label(label) -> tuple[str, list[str], list[str] | None, bool]:
    """(mode, tests or inputs, expected outputs for stdio, all_or_nothing)."""
    if isinstance(label, str):
        text = label.strip()
        decoded = None
        for parse in (json.loads, ast.literal_eval):
            try:
                decoded = parse(text)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        if isinstance(decoded, (list, dict)):
            return parse_code_label(decoded)
        return "asserts", [label], None, False
    all_or_nothing = False
    if isinstance(label, dict):
        all_or_nothing = bool(label.get("all_or_nothing", False))
        if "tests" in label:
            label = label["tests"]
        elif "inputs" in label and "outputs" in label:
            inputs, outputs = list(label["inputs"]), list(label["outputs"])
            if len(inputs) != len(outputs):
                raise ValueError(f"code label has {len(inputs)} inputs but {len(outputs)} outputs")
            return "stdio", [str(i) for i in inputs], [str(o) for o in outputs], all_or_nothing
        else:
            raise ValueError("code label object needs 'tests' or 'inputs'+'outputs'")
    if isinstance(label, str):
        label = [label]
    if not isinstance(label, (list, tuple)) or not label:
        raise ValueError("code label must be a non-empty list of tests")
    if all(isinstance(t, dict) for t in label):
        try:
            return (
                "stdio",
                [str(t["input"]) for t in label],
                [str(t["output"]) for t in label],
                all_or_nothing,
            )
        except KeyError as e:
            raise ValueError(f"code stdio test is missing {e.args[0]!r}") from None
    return "asserts", [str(t) for t in label], None, all_or_nothing


def outputs_match(got: str, expected: str) -> bool:
    def lines(s: str) -> list[str]:
        out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(expected) or got.split() == expected.split()


@register(
    "code",
    description="runs the last ```python block against the label's tests in a sandbox; "
    "score = fraction passed",
    timeout_s=DEFAULT_LIMITS.wall_s + 5.0,
)
def code_reward(completion: str, ground_truth) -> RewardResult:
    mode, tests, expected, all_or_nothing = parse_code_label(ground_truth)
    code = last_python_block(answer_text(completion))
    if code is None:
        return RewardResult(0.0, {"error": "no ```python block"})
    run = run_python(code, tests, mode, DEFAULT_LIMITS)
    passed = 0
    for res in run.tests:
        i = res.get("test")
        if not isinstance(i, int) or not 0 <= i < len(tests):
            continue
        if mode == "asserts":
            passed += bool(res.get("ok"))
        else:
            passed += res.get("error") is None and outputs_match(str(res.get("output", "")), expected[i])
    score = passed / len(tests)
    if all_or_nothing:
        score = float(passed == len(tests))
    meta = {"passed": passed, "total": len(tests), "seconds": round(run.seconds, 3)}
    if run.killed:
        meta["killed"] = run.killed
    if run.solution_error:
        meta["error"] = run.solution_error
    return RewardResult(score, meta)
