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

Every label must hold at least one test, and every assertion test must be Python that can fail: an
``assert`` on anything but a true literal, a ``raise``, or a call to an ``assert*`` function
(unittest/numpy style). A label without one (``"63"``, ``"assert True"``, ``[]``) would pay any
program that runs: a reward hack, so it is a label error.

Score = fraction of tests passed (or 0/1 with ``all_or_nothing``). No python block, a solution that
fails to run, or a run that is killed (time, output) scores 0 for the tests without a result. The
sandbox and its limits: ``reward_fns/sandbox`` and docs/rewards.md.
"""

from __future__ import annotations

import ast
import json
import re

from .answer_text import answer_text, last_match
from .labels import from_parser, is_number, kind
from .registry import RewardResult, register
from .sandbox import SandboxLimits, run_python

DEFAULT_LIMITS = SandboxLimits(wall_s=8.0, cpu_s=4.0, per_test_timeout_s=2.0)

_BLOCK = re.compile(r"```(?:python3?|py)[^\S\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def last_python_block(text: str) -> str | None:
    found = last_match(_BLOCK, text)
    return found.group(1) if found is not None else None


LABEL_TYPES = (
    'tests that can fail: ["assert ...", ...], {"tests": [...]}, {"inputs": [...], "outputs": [...]}, '
    '[{"input": ..., "output": ...}, ...] or one test script (also as a JSON/Python-literal string)'
)
# Expression nodes that make an assert depend on the solution.
_DEPENDS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript)


def _assert_can_fail(test: ast.expr) -> bool:
    if any(isinstance(n, _DEPENDS) for n in ast.walk(test)):
        return True
    try:
        # literal_eval refuses anything costly (no `**`, no `*`), so a hostile label cannot stall it.
        return not ast.literal_eval(test)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return True  # e.g. `1 == 2`: not worth deciding; only truthy literals (`assert True`) are refused


def _can_fail(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and _assert_can_fail(node.test):
            return True
        if isinstance(node, ast.Raise):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name.lower().startswith("assert"):
                return True
    return False


def _check_assert_test(test: str, where: str) -> None:
    try:
        tree = ast.parse(test)
    except SyntaxError as e:
        raise ValueError(f"{where} is not valid Python ({e.msg}, line {e.lineno}): {test[:60]!r}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"{where} is not valid Python ({type(e).__name__}): {test[:60]!r}") from None
    if not _can_fail(tree):
        raise ValueError(
            f"{where} cannot fail (no assert on the solution, raise or assert* call), so any program "
            f"that runs would pass it: {test[:60]!r}"
        )


def _stdio_text(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if is_number(value):
        return str(value)
    raise ValueError(f"{where} must be a string, got {kind(value)}")


def _decode(text: str):
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def parse_code_label(label) -> tuple[str, list[str], list[str] | None, bool]:
    """(mode, tests or inputs, expected outputs for stdio, all_or_nothing); ValueError (the reason)
    for a label that holds no test that can fail."""
    if isinstance(label, str):
        decoded = _decode(label.strip())
        if isinstance(decoded, (list, dict)):
            return parse_code_label(decoded)
        # Not a list/object: the string itself is a test script ("63" decodes to a number and is one).
        _check_assert_test(label, "the test script")
        return "asserts", [label], None, False
    all_or_nothing = False
    if isinstance(label, dict):
        all_or_nothing = bool(label.get("all_or_nothing", False))
        if "tests" in label:
            label = label["tests"]
        elif "inputs" in label and "outputs" in label:
            inputs, outputs = label["inputs"], label["outputs"]
            for what, seq in (("inputs", inputs), ("outputs", outputs)):
                if not isinstance(seq, (list, tuple)):
                    raise ValueError(f"code label {what} must be a list, got {kind(seq)}")
            if len(inputs) != len(outputs):
                raise ValueError(f"code label has {len(inputs)} inputs but {len(outputs)} outputs")
            if not inputs:
                raise ValueError("code label has no tests (empty inputs and outputs)")
            return (
                "stdio",
                [_stdio_text(v, f"input {i + 1}") for i, v in enumerate(inputs)],
                [_stdio_text(v, f"output {i + 1}") for i, v in enumerate(outputs)],
                all_or_nothing,
            )
        else:
            raise ValueError(
                f"code label object needs 'tests' or 'inputs'+'outputs', got keys {sorted(map(str, label))[:6]}"
            )
    if isinstance(label, str):
        label = [label]
    if not isinstance(label, (list, tuple)):
        raise ValueError(f"expected code tests, got {kind(label)}")
    if not label:
        raise ValueError("code label has no tests (empty list)")
    if all(isinstance(t, dict) for t in label):
        inputs, outputs = [], []
        for i, t in enumerate(label):
            for key in ("input", "output"):
                if key not in t:
                    raise ValueError(f"code stdio test {i + 1} is missing {key!r}")
            inputs.append(_stdio_text(t["input"], f"input {i + 1}"))
            outputs.append(_stdio_text(t["output"], f"output {i + 1}"))
        return "stdio", inputs, outputs, all_or_nothing
    tests = []
    for i, t in enumerate(label):
        if not isinstance(t, str):
            raise ValueError(f"code test {i + 1} must be a string of Python, got {kind(t)}")
        _check_assert_test(t, f"code test {i + 1}")
        tests.append(t)
    return "asserts", tests, None, all_or_nothing


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
    label_types=LABEL_TYPES,
    check_label=from_parser(parse_code_label),
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
