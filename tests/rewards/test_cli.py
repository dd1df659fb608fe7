import argparse
import json
import subprocess
import sys

import pytest

from reward_fns.cli import CASES_DIR, add_rewards_parser, main
from reward_fns.errors import RewardInputError, UnknownRewardError


def parse(argv):
    parser = argparse.ArgumentParser()
    add_rewards_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["rewards", *argv])


def run(argv):
    args = parse(argv)
    return args.func(args)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_list(capsys):
    assert run(["list"]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "ifeval" in out and "math" in out
    assert all(len(line.split(None, 1)) == 2 for line in out.strip().splitlines())


def test_score_adds_a_score_field(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"completion": "The answer is 72.", "ground_truth": "72", "dataset": "gsm8k", "id": 1},
            {"completion": "\\boxed{\\frac12}", "ground_truth": "0.5", "dataset": "MATH", "id": 2},
            {
                "completion": "hello, world",
                "ground_truth": '{"func_name": "validate_no_commas"}',
                "dataset": "ifeval",
                "id": 3,
            },
        ],
    )
    assert run(["score", "--input", str(path)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert [r["score"] for r in rows] == [1.0, 1.0, 0.0]
    assert all("score_status" not in r for r in rows)
    assert "gsm8k: 1 scored" in captured.err


def test_score_marks_a_failing_reward(tmp_path, capsys, user_reward_file, clean_registry):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"completion": "ok", "ground_truth": "", "dataset": "raising"},
            {"completion": "boom", "ground_truth": "", "dataset": "raising"},
        ],
    )
    assert run(["score", "--input", str(path), "--reward-module", f"{user_reward_file}:raising"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["score"] for r in rows] == [1.0, 0.0]
    assert rows[1]["score_status"] == "error" and "kaboom" in rows[1]["score_error"]
    assert "raising: 2 scored, mean 0.500, 1 failed" in captured.err


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"completion": "a", "ground_truth": "1", "dataset": "gsm8k"}\n{oops\n', "line 2: not valid JSON"),
        ('{"completion": "a", "dataset": "gsm8k"}\n', "line 1: missing field ground_truth"),
        ("[1, 2]\n", "line 1: expected a JSON object"),
        (
            '{"completion": 5, "ground_truth": "1", "dataset": "gsm8k"}\n',
            "line 1: completion must be a string",
        ),
        ("\n\n", "no lines to score"),
    ],
)
def test_score_malformed_lines(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RewardInputError, match=match) as err:
        run(["score", "--input", str(path)])
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_score_unknown_dataset_names_the_line(tmp_path):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"completion": "a", "ground_truth": "1", "dataset": "gsm8k"},
            {"completion": "a", "ground_truth": "1", "dataset": "mystery"},
        ],
    )
    with pytest.raises(UnknownRewardError, match="line 2: no reward registered for dataset 'mystery'"):
        run(["score", "--input", str(path)])


def test_score_missing_file():
    with pytest.raises(RewardInputError, match="no such file"):
        run(["score", "--input", "/nonexistent/file.jsonl"])


def test_score_with_user_module(tmp_path, capsys, user_reward_file, clean_registry):
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"completion": "42", "ground_truth": "42", "dataset": "exact_answer"}]
    )
    assert (
        run(
            [
                "score",
                "--input",
                str(path),
                "--reward-module",
                f"{user_reward_file}:exact_answer",
                "--timeout",
                "5",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["score"] == 1.0


def test_check_builtin_passes(capsys):
    assert run(["check", "gsm8k"]) == 0
    out = capsys.readouterr().out
    assert "10/10 golden cases pass" in out
    for probe in (
        "empty completion",
        "very long completion",
        "unicode",
        "unclosed <think>",
        "numbers with commas",
    ):
        assert probe in out
    assert "latency: mean" in out and "p95" in out and "variance" in out
    assert "constant reward" not in out


def test_check_failing_case_exits_nonzero(tmp_path, capsys):
    cases = write_jsonl(
        tmp_path / "cases.jsonl",
        [
            {"completion": "The answer is 5", "ground_truth": "5", "expected": 1},
            {"completion": "The answer is 6", "ground_truth": "5", "expected": 1},
        ],
    )
    assert run(["check", "gsm8k", "--cases", str(cases)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  line   2" in out and "1/2 golden cases pass" in out


def test_check_reports_constant_reward_errors_and_timeouts(
    tmp_path, capsys, user_reward_file, clean_registry
):
    cases = write_jsonl(
        tmp_path / "cases.jsonl",
        [
            {"completion": "ok", "ground_truth": "", "expected": 1},
            {"completion": "fine", "ground_truth": "", "expected": 1},
        ],
    )
    assert (
        run(
            [
                "check",
                "hanging",
                "--cases",
                str(cases),
                "--reward-module",
                f"{user_reward_file}:hanging",
                "--timeout",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "constant reward gives no learning signal" in out
    assert "2/2 golden cases pass" in out
    cases2 = write_jsonl(
        tmp_path / "cases2.jsonl",
        [
            {"completion": "boom", "ground_truth": "", "expected": 0},
            {"completion": "ok", "ground_truth": "", "expected": 1},
        ],
    )
    assert (
        run(["check", "raising", "--cases", str(cases2), "--reward-module", f"{user_reward_file}:raising"])
        == 1
    )
    out = capsys.readouterr().out
    assert "[error: RuntimeError: kaboom]" in out and "errors 1" in out


def test_check_needs_cases_for_user_rewards(user_reward_file, clean_registry):
    with pytest.raises(RewardInputError, match="no shipped cases"):
        run(["check", "raising", "--reward-module", f"{user_reward_file}:raising"])


def test_check_unknown_reward():
    with pytest.raises(UnknownRewardError, match="unknown reward 'nope'"):
        run(["check", "nope"])


def test_module_entry_point_prints_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    proc = subprocess.run(
        [sys.executable, "-m", "reward_fns.cli", "rewards", "score", "--input", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: {bad} line 1: not valid JSON (Expecting property name enclosed in double quotes)"
    )
    assert main(["rewards", "list"]) == 0


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in __import__("pathlib").Path(CASES_DIR).glob("*.jsonl"))
)
def test_every_shipped_case_file_passes(name, capsys):
    assert run(["check", name]) == 0, capsys.readouterr().out
