"""Containment: a user reward that raises, hangs, eats memory, kills its process or returns junk
costs that sample's score (0, counted by kind) and nothing else; TRL-style batch functions work
unchanged; metrics and warnings."""

import logging
import time

import pytest

from reward_fns import RewardInputError, RewardRunner, UnknownRewardError, register

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def runner(user_reward_file, snapshot_registry):
    names = [
        "exact_answer",
        "raising",
        "hanging",
        "sleepy",
        "memory_hog",
        "dying",
        "junk",
        "with_metadata",
        "trl_style",
        "trl_hanging",
        "trl_wrong_length",
    ]
    with snapshot_registry():
        r = RewardRunner(
            timeout_s=TIMEOUT,
            num_workers=2,
            memory_limit_mb=1024,
            extra_modules=[f"{user_reward_file}:{n}" for n in names] + [str(user_reward_file)],
        )
        yield r
        r.close()


def test_raising_reward_scores_zero_and_is_counted(runner):
    batch = runner.score(["ok", "boom", "ok"], ["", "", ""], ["raising"] * 3)
    assert batch.scores == [1.0, 0.0, 1.0]
    assert batch.statuses == ["ok", "error", "ok"]
    st = batch.stats["raising"]
    assert (st.count, st.errors, st.timeouts, st.junk) == (3, 1, 0, 0)
    assert "RuntimeError: kaboom" in st.first_error


@pytest.mark.parametrize("name,marker", [("hanging", "hang"), ("sleepy", "sleep")])
def test_hanging_reward_is_killed_and_only_that_sample_lost(runner, name, marker):
    completions = ["ok"] * 3 + [marker] + ["ok"] * 4
    start = time.monotonic()
    batch = runner.score(completions, [""] * 8, [name] * 8)
    elapsed = time.monotonic() - start
    assert batch.scores == [1.0] * 3 + [0.0] + [1.0] * 4
    assert batch.statuses[3] == "timeout"
    assert batch.stats[name].timeouts == 1 and batch.stats[name].errors == 0
    assert elapsed < TIMEOUT + 8  # one timeout plus a worker restart, not a stall


def test_memory_hungry_reward_fails_alone(runner):
    batch = runner.score(["ok", "hog", "ok"], [""] * 3, ["memory_hog"] * 3)
    assert batch.scores == [1.0, 0.0, 1.0]
    assert batch.statuses[1] == "error"
    assert "MemoryError" in batch.messages[1]


def test_reward_that_kills_its_worker(runner):
    batch = runner.score(["ok", "die", "ok", "ok"], [""] * 4, ["dying"] * 4)
    assert batch.scores == [1.0, 0.0, 1.0, 1.0]
    assert batch.statuses[1] == "error"
    assert "worker process died" in batch.messages[1]


def test_junk_returns(runner):
    completions = ["str", "nan", "inf", "list", "none", "fine"]
    batch = runner.score(completions, [""] * 6, ["junk"] * 6)
    assert batch.statuses == ["junk", "junk", "junk", "junk", "no_score", "ok"]
    assert batch.scores == [0.0, 0.0, 0.0, 0.0, 0.0, 0.25]
    st = batch.stats["junk"]
    assert (st.junk, st.no_score, st.errors) == (4, 1, 0)


def test_mixed_batch_with_builtins_and_case_insensitive_names(runner):
    batch = runner.score(
        ["The answer is 72.", "\\boxed{1+2x}", "42", "no", "boom"],
        ["72", "2x+1", "42", "yes", ""],
        ["GSM8K", "MATH", "exact_answer", "Exact_Answer", "raising"],
    )
    assert batch.scores == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert set(batch.stats) == {"gsm8k", "math", "exact_answer", "raising"}


def test_prompt_token_ids_and_metadata_reach_the_reward(runner):
    batch = runner.score(
        ["a", "b"],
        ["", ""],
        ["with_metadata", "decorated_reward"],
        prompts=["hello", "secret prompt"],
        token_ids=[[1, 2, 3], None],
    )
    assert batch.metadata[0] == {"prompt": "hello", "n_tokens": 3}
    assert batch.scores == [0.5, 1.0]


def test_trl_style_batch_function(runner):
    batch = runner.score(["a", "b", "skip", "c"], ["a", "x", "skip", "c"], ["trl_style"] * 4)
    assert batch.scores == [1.0, 0.0, 0.0, 1.0]
    assert batch.statuses == ["ok", "ok", "no_score", "ok"]
    assert batch.stats["trl_style"].no_score == 1


def test_trl_batch_that_hangs_is_retried_one_by_one(runner):
    batch = runner.score(["a", "hang", "b"], [""] * 3, ["trl_hanging"] * 3)
    assert batch.scores == [1.0, 0.0, 1.0]
    assert batch.statuses == ["ok", "timeout", "ok"]


def test_trl_batch_wrong_length_is_an_error(runner):
    # 4 samples over 2 workers: chunks of 2, each answered with a single score.
    batch = runner.score(["a", "b", "c", "d"], [""] * 4, ["trl_wrong_length"] * 4)
    assert batch.statuses == ["error"] * 4
    assert "1 scores for 2 completions" in batch.messages[0]


def test_metrics_are_flat_and_named(runner):
    batch = runner.score(["ok", "boom", "The answer is 3"], ["", "", "3"], ["raising", "raising", "gsm8k"])
    m = batch.metrics()
    assert m["reward/raising/errors"] == 1
    assert m["reward/raising/mean"] == 0.5
    assert m["reward/raising/accuracy"] == 0.5
    assert m["reward/gsm8k/accuracy"] == 1.0
    assert m["reward/gsm8k/timeouts"] == 0
    assert m["reward/all/count"] == 3
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert "train/gsm8k/mean" in batch.metrics(prefix="train")


def test_mostly_failing_verifier_logs_a_loud_warning(runner, caplog):
    with caplog.at_level(logging.WARNING, logger="reward_fns.runner"):
        runner.score(["boom", "boom", "boom", "ok"], [""] * 4, ["raising"] * 4)
    assert any("FAILED ON 3 OF 4" in r.getMessage() for r in caplog.records)


def test_bad_inputs(runner):
    with pytest.raises(UnknownRewardError, match="no reward registered for dataset nope"):
        runner.score(["a"], ["b"], ["nope"])
    with pytest.raises(RewardInputError, match="ground_truths has 2 entries for 1 completions"):
        runner.score(["a"], ["b", "c"], ["gsm8k"])


def test_builtin_label_errors_are_counted_not_raised(runner):
    batch = runner.score(["42", "x"], ["no number here", "{not json"], ["gsm8k", "ifeval"])
    assert batch.statuses == ["label_error", "label_error"]
    assert batch.stats["gsm8k"].label_errors == 1 and batch.stats["gsm8k"].errors == 0


def test_in_process_mode_still_contains_exceptions(user_reward_file, clean_registry):
    with RewardRunner(num_workers=0, extra_modules=[f"{user_reward_file}:raising"]) as r:
        batch = r.score(["ok", "boom"], ["", ""], ["raising", "raising"])
    assert batch.statuses == ["ok", "error"]


def test_unimportable_reward_runs_in_process_with_a_warning(clean_registry, caplog):
    register("closure_reward")(lambda completion, ground_truth: 0.75)
    with RewardRunner(num_workers=1) as r, caplog.at_level(logging.WARNING, logger="reward_fns.runner"):
        batch = r.score(["a"], ["b"], ["closure_reward"])
    assert batch.scores == [0.75]
    assert any("WITHOUT a time or memory limit" in rec.getMessage() for rec in caplog.records)


def test_runner_is_cheap_to_construct_and_closes():
    start = time.monotonic()
    r = RewardRunner()
    assert time.monotonic() - start < 0.1
    batch = r.score(["The answer is 5"], ["5"], ["gsm8k"])  # in-process built-in: no worker needed
    assert batch.scores == [1.0] and not r._workers
    r.close()
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.score(["5"], ["5"], ["gsm8k"])


def test_close_stops_workers(user_reward_file, clean_registry):
    with RewardRunner(num_workers=2, extra_modules=[f"{user_reward_file}:exact_answer"]) as r:
        r.score(["1", "2", "3"], ["1", "2", "3"], ["exact_answer"] * 3)
        procs = [w.proc for w in r._workers]
        assert procs and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


def test_bad_extra_module_fails_at_construction(tmp_path):
    with pytest.raises(UnknownRewardError, match="not found"):
        RewardRunner(extra_modules=[str(tmp_path / "missing.py:fn")])
