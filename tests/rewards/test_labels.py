"""Labels are checked per verifier: each built-in accepts exactly the labels it can score, a wrong
one is a one-line reason (label_problem), the runner counts it as label_error instead of a plain 0,
and the CLI refuses it naming file, line and verifier before scoring anything."""

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from reward_fns import RewardRunner, get_reward, get_spec, label_problem, load_user_rewards, register
from reward_fns.cli import main
from reward_fns.errors import RewardError, UnknownRewardError

TULU_END = {"func_name": "validate_end", "end_phrase": "Bye.", "N": None, "keyword_list": None}
IFEVAL = {
    "instruction_id": ["punctuation:no_comma", "keywords:existence"],
    "kwargs": [{}, {"keywords": ["sun"]}],
}

# (verifier, label, a completion that the verifier scores with that label, its score)
ACCEPTED = [
    ("gsm8k", "72", "so 72", 1.0),
    ("gsm8k", 72, "so 72", 1.0),
    ("gsm8k", 72.0, "so 72", 1.0),
    ("gsm8k", "1,234", "it is 1234", 1.0),
    ("gsm8k", "$10", "Answer: 10", 1.0),
    ("gsm8k", "Natalia sold 48/2 = 24 clips.\n#### 72", "72", 1.0),
    ("gsm8k", ["-5"], "-5", 1.0),
    ("gsm8k", '["72"]', "so 72", 1.0),  # labels that travelled as JSON text (open_instruct's rows)
    ("math", '["1/2", "0.5"]', "\\boxed{0.5}", 1.0),
    ("math", "[1, 2]", "\\boxed{[1, 2]}", 1.0),  # an interval, not a list of answers
    ("math", "\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("math", 3, "\\boxed{3}", 1.0),
    ("math", ["2", "two"], "\\boxed{2}", 1.0),
    ("strict_math", "15", "Final Answer: The final answer is 15. I hope it is correct.", 1.0),
    ("ifeval", TULU_END, "Hello. Bye.", 1.0),
    ("ifeval", json.dumps(TULU_END), "Hello. Bye.", 1.0),
    ("ifeval", IFEVAL, "the sun, the moon", 0.5),
    ("ifeval", [IFEVAL], "the sun and the moon", 1.0),
    ("ifeval", repr([IFEVAL]), "the sun and the moon", 1.0),
    ("ifeval", repr({"instruction_id": ["punctuation:no_comma"], "kwargs": [None]}), "a b", 1.0),
    ("ifeval_loose", {"func_name": "validate_no_commas"}, "a b", 1.0),
    ("string_match", "Paris", "paris.", 1.0),
    ("string_match", ["London", "Paris"], "Paris", 1.0),
    ("string_match", '["London", "Paris"]', "Paris", 1.0),
    ("f1", "big red dog", "big dog", 0.8),
    ("f1", 1945, "1945", 1.0),
    ("max_length", 4, "a b", 1.0),
    ("max_length", "4", "a b", 1.0),
    ("max_length", {"max_length": 2, "unit": "words"}, "a b c", 0.5),
]

# (verifier, label, words the reason must contain)
REJECTED = [
    ("gsm8k", {"answer": 72}, "expected a number, got a dict"),
    ("gsm8k", '{"answer": 72}', "expected a number, got a JSON object"),
    ("gsm8k", "forty-two", "holds no number"),
    ("gsm8k", "1/2", "not a single number"),
    ("gsm8k", True, "got a boolean"),
    ("gsm8k", None, "got None"),
    ("gsm8k", float("nan"), "finite"),
    ("math", {"answer": "1/2"}, "expected an answer string or number, got a dict"),
    ("math", "  ", "got an empty string"),
    ("math", '{"answer": "1/2"}', "got a JSON object"),
    ("math", [], "empty list"),
    ("math", ["1", None], "list item 2, got None"),
    ("strict_math", None, "got None"),
    ("ifeval", "{not json", "neither JSON nor a Python literal"),
    ("ifeval", 5, "got an int"),
    ("ifeval", {"answer": 1}, "neither 'func_name' nor 'instruction_id'"),
    ("ifeval", {"func_name": "validate_everything"}, "unknown Tülu IF function 'validate_everything'"),
    ("ifeval", {"instruction_id": ["keywords:nonsense"], "kwargs": [{}]}, "unknown IFEval instruction id"),
    ("ifeval", {"instruction_id": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "1 instruction ids but 2"),
    ("ifeval", json.dumps({"func_name": "validate_end", "end_phrase": None}), "missing end_phrase"),
    (
        "ifeval",
        {"func_name": "validate_word_constraint", "N": "many", "quantifier": "at least"},
        "N must be an integer",
    ),
    ("ifeval", {"func_name": "validate_word_constraint", "N": 5, "quantifier": "roughly"}, "'roughly'"),
    ("ifeval_loose", {"instruction_id": ["language:response_language"], "kwargs": [{}]}, "missing language"),
    ("string_match", {"answer": "Paris"}, "expected an answer string, got a dict"),
    ("string_match", "", "empty string"),
    ("string_match", '{"answer": "Paris"}', "got a JSON object"),
    ("string_match", "[]", "empty list"),
    ("string_match", "The", "normalises to nothing"),
    ("f1", ["dog", None], "list item 2, got None"),
    ("code", "63", "cannot fail"),
    ("code", "assert True", "cannot fail"),
    ("code", ["assert add(1, 2) == 3", "print('hi')"], "code test 2 cannot fail"),
    ("code", ["assert add(1, 2) =="], "not valid Python"),
    ("code", [], "no tests"),
    ("code", {"tests": []}, "no tests"),
    ("code", {"inputs": [], "outputs": []}, "no tests"),
    ("code", {"inputs": "1 2", "outputs": "3"}, "inputs must be a list"),
    ("code", {"input": ["1"]}, "needs 'tests' or 'inputs'+'outputs'"),
    ("code", [{"input": "1"}], "missing 'output'"),
    ("code", 63, "expected code tests, got an int"),
    ("max_length", 0.5, "at least 1"),
    ("max_length", "512 tokens", "not a number or JSON object"),
    ("max_length", {"max_len": 5}, "got None"),
    ("max_length", {"max_length": 5, "unit": "lines"}, "unit 'lines'"),
]


@pytest.mark.parametrize("name,label,completion,score", ACCEPTED)
def test_accepted_labels_are_scored_by_the_verifier(name, label, completion, score):
    assert label_problem(name, label) is None
    assert get_reward(name)(completion, label).score == pytest.approx(score)


@pytest.mark.parametrize("name,label,reason", REJECTED)
def test_rejected_labels_give_a_short_reason_and_never_a_score(name, label, reason):
    problem = label_problem(name, label)
    assert problem is not None and reason in problem, problem
    assert "\n" not in problem and len(problem) < 300
    # Called directly, the verifier refuses the label too: it never scores it silently.
    with pytest.raises(ValueError):
        get_reward(name)("```python\ndef add(a, b):\n    return a + b\n```\n72", label)


def test_code_accepts_real_tests():
    for label in (
        ["assert add(1, 2) == 3"],
        "assert add(1, 2) == 3\nassert add(0, 0) == 0",
        {"tests": ["self.assertEqual(add(1, 2), 3)"]},
        "def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)",
        "if add(1, 2) != 3:\n    raise AssertionError",
        ["assert False"],  # always fails: useless, but no free reward
        {"inputs": ["1 2\n"], "outputs": ["3\n"]},
        [{"input": "1 2", "output": 3}],
        json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]}),
    ):
        assert label_problem("code", label) is None, label


def test_code_label_without_a_test_no_longer_pays_any_program():
    """The reward hack: a `code` label "63" ran as a test script that always passes, so any program
    that ran scored 1.0. Now it is a label error and scores nothing."""
    junk_program = "```python\nprint('not a solution')\n```"
    with RewardRunner(timeout_s=20, num_workers=1) as runner:
        batch = runner.score(
            [junk_program, junk_program], ["63", ["assert add(1, 2) == 3"]], ["code", "code"]
        )
    assert batch.statuses == ["label_error", "ok"]
    assert batch.scores == [0.0, 0.0]
    assert "cannot fail" in batch.messages[0]
    assert batch.stats["code"].label_errors == 1


def test_label_problem_names_are_case_insensitive_and_unknown_names_raise():
    assert label_problem("GSM8K", {"answer": 1}) == label_problem("gsm8k", {"answer": 1})
    assert label_problem(" Math ", "x") is None
    with pytest.raises(UnknownRewardError, match="unknown reward 'nope'"):
        label_problem("nope", "1")


def test_every_builtin_declares_its_labels():
    for name in (
        "gsm8k",
        "math",
        "strict_math",
        "ifeval",
        "ifeval_loose",
        "string_match",
        "f1",
        "code",
        "max_length",
    ):
        spec = get_spec(name)
        assert spec.label_types and spec.check_label is not None, name


def test_runner_counts_label_errors_and_scores_the_rest(caplog):
    runner = RewardRunner(num_workers=0)
    with caplog.at_level(logging.WARNING, logger="reward_fns.runner"):
        batch = runner.score(
            ["so 72", "so 72", "so 72", "Bye."],
            ["72", {"answer": 72}, {"answer": 72}, {"func_name": "validate_end", "end_phrase": "Bye."}],
            ["gsm8k", "gsm8k", "GSM8K", "ifeval"],
        )
    assert batch.scores == [1.0, 0.0, 0.0, 1.0]
    assert batch.statuses == ["ok", "label_error", "label_error", "ok"]
    assert batch.messages[1] == "label not usable by 'gsm8k': expected a number, got a dict"
    m = batch.metrics()
    assert m["reward/gsm8k/label_errors"] == 2 and m["reward/gsm8k/errors"] == 0
    assert m["reward/all/label_errors"] == 2 and m["reward/ifeval/label_errors"] == 0
    assert m["reward/gsm8k/count"] == 3 and m["reward/gsm8k/mean"] == pytest.approx(1 / 3)
    assert any("2 OF 3 LABELS ARE NOT USABLE" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- users' own rewards
USER_FILE = textwrap.dedent('''
    from reward_fns import register


    def check_answer_label(label):
        """an object with an "answer" string"""
        if not isinstance(label, dict) or not isinstance(label.get("answer"), str):
            return "expected an object with an 'answer' string"
        return None


    def by_answer(completion, ground_truth):
        return float(completion == ground_truth["answer"])


    by_answer.check_label = check_answer_label


    def typed(completion, ground_truth):
        return float(completion == str(ground_truth))


    typed.label_types = (str, int)


    def undeclared(completion, ground_truth):
        return 1.0


    def strict(completion, ground_truth):
        return 1.0


    def _reject_odd(label):
        if label % 2:
            raise ValueError(f"{label} is odd")
        return label == 0 or None


    strict.check_label = _reject_odd
    strict.label_types = "an even int"


    def batch_reward(completions, ground_truth, **kwargs):
        return [1.0 for _ in completions]


    batch_reward.label_types = str


    @register("registered_typed", label_types=(list,))
    def registered(completion, ground_truth):
        return float(len(ground_truth))
''')


@pytest.fixture
def user_file(tmp_path, clean_registry):
    path = tmp_path / "labelled_rewards.py"
    path.write_text(USER_FILE)
    for fn in ("by_answer", "typed", "undeclared", "strict", "batch_reward"):
        load_user_rewards(f"{path}:{fn}")
    load_user_rewards(str(path))
    return path


def test_user_rewards_declare_labels_on_the_function(user_file):
    assert label_problem("by_answer", {"answer": "x"}) is None
    assert label_problem("BY_ANSWER", "x") == "expected an object with an 'answer' string"
    assert get_spec("by_answer").label_types == 'an object with an "answer" string'
    assert label_problem("typed", "a") is None and label_problem("typed", 3) is None
    assert label_problem("typed", True) == "expected str or int, got a boolean (True)"
    assert label_problem("typed", [1]) == "expected str or int, got a list"
    assert label_problem("undeclared", {"anything": object()}) is None
    assert get_spec("undeclared").label_types is None
    assert label_problem("strict", 3) == "3 is odd"  # a ValueError from the checker is the reason
    assert label_problem("strict", 0) is None
    assert label_problem("strict", 2) is None
    # a TypeError too: the checker could not handle the label
    assert label_problem("strict", "x") == "not all arguments converted during string formatting"
    assert label_problem("batch_reward", 1) == "expected str, got an int"
    assert (
        label_problem("registered_typed", [1]) is None and label_problem("registered_typed", "1") is not None
    )


def test_user_checker_that_returns_false_or_junk(clean_registry):
    @register("says_false", check_label=lambda label: label == "ok")
    def says_false(completion, ground_truth):
        return 1.0

    @register("says_junk", check_label=lambda label: 1)
    def says_junk(completion, ground_truth):
        return 1.0

    assert label_problem("says_false", "ok") is None
    assert "got the string 'nope'" in label_problem("says_false", "nope")
    assert "expected None/True or a reason string" in label_problem("says_junk", "ok")


def test_user_label_declaration_errors_are_one_line(tmp_path, clean_registry):
    path = tmp_path / "bad_decl.py"
    path.write_text("def f(completion, ground_truth):\n    return 1.0\n\nf.label_types = 'a number'\n")
    with pytest.raises(
        RewardError, match="label_types 'a number' is a description; also give check_label"
    ) as err:
        load_user_rewards(f"{path}:f")
    assert "\n" not in str(err.value) and "bad_decl.py:f" in str(err.value)
    with pytest.raises(RewardError, match="check_label must be callable"):
        register("not_callable", check_label="yes")(lambda completion, ground_truth: 1.0)


def test_user_label_check_runs_in_the_runner_with_workers(user_file):
    with RewardRunner(timeout_s=10, num_workers=1) as runner:
        batch = runner.score(
            ["x", "x", "y"], [{"answer": "x"}, "x", 5], ["by_answer", "by_answer", "undeclared"]
        )
    assert batch.statuses == ["ok", "label_error", "ok"]
    assert batch.scores == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------- command line
def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(argv):
    proc = subprocess.run([sys.executable, "-m", "reward_fns.cli", *argv], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_score_rejects_a_wrong_label_before_scoring(tmp_path):
    path = write_rows(
        tmp_path / "rows.jsonl",
        [
            {"completion": "so 72", "ground_truth": "72", "dataset": "gsm8k"},
            {"completion": "so 72", "ground_truth": {"answer": 72}, "dataset": "GSM8K"},
            {"completion": "x", "ground_truth": "63", "dataset": "code"},
        ],
    )
    code, out, err = run_cli(["rewards", "score", "--input", str(path)])
    assert code == 2
    assert out == ""  # nothing scored
    assert err == (
        f"error: {path} line 2: ground_truth for verifier 'gsm8k': expected a number, got a dict "
        "(and 1 more line with unusable labels)\n"
    )


def test_check_rejects_a_wrong_label_in_the_cases(tmp_path):
    cases = write_rows(
        tmp_path / "cases.jsonl",
        [
            {
                "completion": "```python\ndef f():\n    return 1\n```",
                "ground_truth": ["assert f() == 1"],
                "expected": 1,
            },
            {"completion": "```python\nprint(1)\n```", "ground_truth": "63", "expected": 0},
        ],
    )
    code, out, err = run_cli(["rewards", "check", "code", "--cases", str(cases)])
    assert code == 2 and out == ""
    assert err.startswith(
        f"error: {cases} line 2: ground_truth for verifier 'code': the test script cannot fail"
    )
    assert err.count("\n") == 1


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_below_one_is_a_one_line_error(tmp_path, workers):
    path = write_rows(tmp_path / "rows.jsonl", [{"completion": "1", "ground_truth": "1", "dataset": "gsm8k"}])
    code, out, err = run_cli(["rewards", "score", "--input", str(path), "--workers", workers])
    assert (code, out, err) == (2, "", f"error: --workers must be at least 1, got {workers}\n")


def test_timeout_must_be_positive(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", [{"completion": "1", "ground_truth": "1", "dataset": "gsm8k"}])
    assert main(["rewards", "score", "--input", str(path), "--timeout", "0"]) == 2
    assert main(["rewards", "check", "gsm8k", "--timeout", "-1"]) == 2


def test_the_open_instruct_command_prints_the_label_error(tmp_path, capsys):
    from open_instruct.cli import main as lead_main

    path = write_rows(tmp_path / "rows.jsonl", [{"completion": "a", "ground_truth": None, "dataset": "math"}])
    assert lead_main(["rewards", "score", "--input", str(path)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {path} line 1: ground_truth for verifier 'math': expected an answer string or number, got None\n"
    )
    assert lead_main(["rewards", "score", "--input", str(path), "--workers", "0"]) == 2
    assert capsys.readouterr().err == "error: --workers must be at least 1, got 0\n"


def test_list_shows_accepted_labels(user_file, capsys):
    assert main(["rewards", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "[label: a number" in lines["gsm8k"]
    assert "[label: str or int]" in lines["typed"]
    assert "[label: any (not declared)]" in lines["undeclared"]
