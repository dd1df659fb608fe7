"""A run that learns nothing says so: GRPO on prompts whose reward is the same for every sample has
no learning signal (every group's rewards tie, every advantage is 0). metrics.jsonl says it per step
(tied_group_fraction, zero_advantage, no_signal), the log warns per step and once for the run, the
published model is the model it started from, and the recipe summary and report.md say "no change"
for that stage instead of "trained".

One recipe run for the module (real vLLM engine, reward workers, learner): a base model from a local
dir, no held-out eval, two small GRPO stages -- `flat` (a constant user reward: no signal) and then
`learn` (a reward that differs between samples: it trains)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from open_instruct.recipe.run import run_recipe

pytestmark = pytest.mark.slow

REWARDS = """
def constant_half(completion, ground_truth):
    return 0.5


def text_length_mod_5(completion, ground_truth):
    return float(len(completion) % 5)
"""


def _stage(name: str, rows: Path, reward: str, module: Path) -> dict:
    return {
        "name": name,
        "type": "rlvr",
        "algorithm": "grpo",
        "dataset_mix": str(rows),
        "reward_modules": [f"{module}:{reward}"],
        "num_unique_prompts_rollout": 4,
        "num_samples_per_prompt_rollout": 4,
        "num_mini_batches": 2,  # two updates per batch: the old log-probs come from their own pass
        "per_device_train_batch_size": 8,
        "max_train_steps": 2,
        "response_length": 8,
        "max_prompt_length": 64,
        "learning_rate": 1e-3,
        "beta": 0.0,
        "non_stop_penalty": False,  # 8 tokens cut most answers; a penalty would tie those groups
        "seed": 0,
        "rollout": {"multiprocess_engine": False, "kv_cache_gib": 0.25},
    }


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory, ray_session) -> dict:
    root = tmp_path_factory.mktemp("signals")
    module = root / "my_rewards.py"
    module.write_text(REWARDS)
    rows = {}
    for reward in ("constant_half", "text_length_mod_5"):
        rows[reward] = root / f"{reward}.jsonl"
        rows[reward].write_text(
            "".join(
                json.dumps(
                    {
                        "messages": [{"role": "user", "content": f"What is {a} + {a + 3}?"}],
                        "ground_truth": str(2 * a + 3),
                        "dataset": reward,
                    }
                )
                + "\n"
                for a in range(10, 26)
            )
        )
    recipe = {
        "name": "signals",
        "base_model": str(tiny_model_dir),
        "output_dir": str(root / "run"),
        "eval": None,
        "defaults": {"chat_template": "tulu", "dtype": "float32", "logging_steps": 1},
        "stages": [
            _stage("flat", rows["constant_half"], "constant_half", module),
            _stage("learn", rows["text_length_mod_5"], "text_length_mod_5", module),
        ],
    }
    path = root / "signals.yaml"
    path.write_text(yaml.safe_dump(recipe))

    records = _Records()
    logger = logging.getLogger("open_instruct")
    logger.addHandler(records)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            run_recipe(path)
    finally:
        logger.removeHandler(records)
        print(buf.getvalue())  # shown by pytest on failure
    out = root / "run"
    return {"out": out, "stdout": buf.getvalue(), "warnings": records.lines, "base": tiny_model_dir}


def _rows(stage_dir: Path) -> list[dict]:
    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "reward_mean" in r]


def _max_weight_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_tied_rewards_are_reported_every_step(run):
    rows = _rows(run["out"] / "flat")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward_mean"] == 0.5
        assert (r["tied_group_fraction"], r["zero_advantage"], r["no_signal"]) == (1.0, 1.0, 1.0), r


def test_a_run_without_signal_warns_per_step_and_once_for_the_run(run):
    flat = [w for w in run["warnings"] if "no learning signal" in w]
    assert flat == [
        "rlvr step 1: no learning signal: all advantages are 0 (every group's rewards tie)",
        "rlvr step 2: no learning signal: all advantages are 0 (every group's rewards tie)",
    ], run["warnings"]
    whole = [w for w in run["warnings"] if "none of the" in w]
    assert len(whole) == 1 and "none of the 2 steps had a learning signal" in whole[0]
    assert "tied_group_fraction" in whole[0]  # where to look
    summary = json.loads((run["out"] / "flat" / "train_summary.json").read_text())
    assert summary["no_signal_steps"] == 2


def test_a_run_without_signal_publishes_its_starting_weights(run):
    assert _max_weight_diff(run["base"], run["out"] / "flat") == 0.0


def test_a_run_with_signal_has_untied_groups_no_warning_and_moves(run):
    rows = _rows(run["out"] / "learn")
    assert len(rows) == 2
    for r in rows:
        assert r["tied_group_fraction"] < 1.0 and r["zero_advantage"] == 0.0 and r["no_signal"] == 0.0, r
    # the warnings above came from `flat` alone
    assert sum("no learning signal" in w for w in run["warnings"]) == 2
    assert json.loads((run["out"] / "learn" / "train_summary.json").read_text())["no_signal_steps"] == 0
    assert _max_weight_diff(run["out"] / "flat", run["out"] / "learn") > 1e-4


def test_summary_and_report_say_no_change_for_the_stage_that_learned_nothing(run):
    status = {}
    for line in run["stdout"].splitlines():
        cells = line.split()
        if cells[:2] in (["flat", "rlvr"], ["learn", "rlvr"]):
            status[cells[0]] = " ".join(cells[2:4])
    assert status["flat"] == "no change", run["stdout"]
    assert status["learn"].startswith("trained"), run["stdout"]
    assert "stage flat: WARNING its weights are identical to its parent's" in run["stdout"]

    report = (run["out"] / "report.md").read_text()
    table = {
        cells[0]: cells[2]
        for line in report.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.strip("|").split("|")]) > 2
    }
    assert table["flat"] == "no change" and table["learn"] == "trained", report
    assert "status no change" in report
    flat = report[report.index("## flat (rlvr)") : report.index("## learn (rlvr)")]
    assert "**2 of 2 RL steps had no learning signal**" in flat
    assert report.count("had no learning signal") == 1  # not for `learn`
