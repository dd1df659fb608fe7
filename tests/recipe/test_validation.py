"""A broken recipe fails in validation, with one line naming the stage and the key or file, before
anything is trained or written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from open_instruct.errors import ConfigError, DataError, UserError
from open_instruct.recipe import run as recipe_run
from open_instruct.recipe.load import apply_recipe_overrides
from open_instruct.recipe.run import run_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_recipe(tmp_path):
    """A copy of recipes/tiny.yaml in tmp_path (data paths still resolve against the repo root)."""
    data = yaml.safe_load((REPO / "recipes/tiny.yaml").read_text())

    def write(mutate=None) -> Path:
        d = json.loads(json.dumps(data))
        if mutate:
            mutate(d)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return path

    return write


def _stage(d, name):
    return next(s for s in d["stages"] if s["name"] == name)


class ReachedTraining(Exception):
    pass


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """If validation wrongly passed, stop instead of training the tiny recipe."""

    def refuse(plan):
        raise ReachedTraining("validation passed and the run started")

    monkeypatch.setattr(recipe_run, "run_plan", refuse)


def _fails(recipe, tmp_path, exc=UserError, overrides=None, *, contains=()):
    out = tmp_path / "out"
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with pytest.raises(exc) as info:
            run_recipe(recipe, overrides=overrides, output=str(out))
    finally:
        os.chdir(cwd)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in contains:
        assert part in msg, msg
    assert not out.exists(), "validation must fail before any output is written"
    return msg


def test_typo_in_a_stage_key(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: _stage(d, "dpo").update(learnig_rate=1e-4))
    _fails(
        path,
        tmp_path,
        ConfigError,
        contains=("stage dpo", "unknown key 'learnig_rate'", "did you mean 'learning_rate'"),
    )


def test_wrong_type(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: _stage(d, "sft").update(max_train_steps="lots"))
    _fails(path, tmp_path, ConfigError, contains=("stage sft.max_train_steps", "'lots' is not int"))


def test_missing_data_file(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: _stage(d, "dpo").update(dataset_mix="data_mixes/no_such_mix.yaml"))
    _fails(path, tmp_path, DataError, contains=("stage dpo.dataset_mix", "no_such_mix.yaml", "not found"))


def test_missing_file_inside_a_mix(tiny_recipe, tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text("kind: sft\nsources:\n  - path: samples_gone/sft.jsonl\n")
    path = tiny_recipe(lambda d: _stage(d, "sft").update(dataset_mix=str(mix)))
    _fails(
        path, tmp_path, DataError, contains=("stage sft.dataset_mix", "samples_gone/sft.jsonl", "not found")
    )


def test_unknown_reward_name_in_local_rlvr_data(tiny_recipe, tmp_path):
    rows = tmp_path / "prompts.jsonl"
    good = {
        "messages": [{"role": "user", "content": "What is 1 + 2?"}],
        "ground_truth": "3",
        "dataset": "gsm8k",
    }
    bad = dict(good, dataset="no_such_verifier")
    rows.write_text("".join(json.dumps(r) + "\n" for r in [good] * 20 + [bad]))  # the bad row is not first
    path = tiny_recipe(lambda d: _stage(d, "rlvr").update(dataset_mix=str(rows)))
    _fails(path, tmp_path, DataError, contains=("stage rlvr", "no_such_verifier"))


def test_missing_user_reward_module(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: _stage(d, "rlvr").update(reward_modules=["my_missing_rewards.py:score"]))
    _fails(path, tmp_path, DataError, contains=("stage rlvr.reward_modules[0]", "my_missing_rewards.py"))


def test_user_reward_module_registers_its_name(tiny_recipe, tmp_path):
    """A verifier that exists only in a user module is refused until the module is listed."""
    name = "pipeline_test_exact_three"
    mod = tmp_path / "my_rewards.py"
    mod.write_text(f"def {name}(completion, ground_truth):\n    return float('3' in completion)\n")
    rows = tmp_path / "prompts.jsonl"
    row = {"messages": [{"role": "user", "content": "1 + 2?"}], "ground_truth": "3", "dataset": name}
    rows.write_text("".join(json.dumps(row) + "\n" for _ in range(20)))
    path = tiny_recipe(lambda d: _stage(d, "rlvr").update(dataset_mix=str(rows)))
    _fails(path, tmp_path, DataError, contains=(name,))
    path = tiny_recipe(
        lambda d: _stage(d, "rlvr").update(dataset_mix=str(rows), reward_modules=[f"{mod}:{name}"])
    )
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        text = run_recipe(path, output=str(tmp_path / "out"), dry_run=True)
    finally:
        os.chdir(cwd)
    assert f"verifiers: gsm8k, {name}" in text  # its own data + the held-out gsm8k prompts


def test_data_of_the_wrong_kind(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: _stage(d, "sft").update(dataset_mix="data_mixes/tiny_preference.yaml"))
    _fails(path, tmp_path, DataError, contains=("stage sft.dataset_mix", "'preference' mix", "needs 'sft'"))


def test_batch_that_does_not_divide(tiny_recipe, tmp_path):
    _fails(
        tiny_recipe(),
        tmp_path,
        ConfigError,
        overrides=["sft.total_batch_size=100"],
        contains=("stage sft.total_batch_size", "not divisible"),
    )
    _fails(
        tiny_recipe(),
        tmp_path,
        ConfigError,
        overrides=["sft.num_processes=3", "sft.total_batch_size=128"],
        contains=("stage sft.total_batch_size", "processes (3)"),
    )


def test_rlvr_mini_batch_arithmetic(tiny_recipe, tmp_path):
    _fails(
        tiny_recipe(),
        tmp_path,
        ConfigError,
        overrides=["rlvr.num_mini_batches=3"],
        contains=("stage rlvr.num_mini_batches", "does not divide"),
    )
    # the learner over processes: each mini-batch must split evenly, and processes evenly over nodes
    _fails(
        tiny_recipe(),
        tmp_path,
        ConfigError,
        overrides=["rlvr.num_processes=2"],  # 32 sequences per process x 2 > the mini-batch of 32
        contains=("stage rlvr.per_device_train_batch_size", "2 processes", "mini-batch of 32"),
    )
    _fails(
        tiny_recipe(),
        tmp_path,
        ConfigError,
        overrides=["rlvr.num_processes=3", "rlvr.nodes=2", "rlvr.per_device_train_batch_size=8"],
        contains=("stage rlvr.num_processes", "3 processes do not split evenly over 2 nodes"),
    )


def test_rlvr_learner_over_processes_in_the_plan(tiny_recipe, tmp_path):
    text = run_recipe(
        tiny_recipe(),
        overrides=["rlvr.num_processes=2", "rlvr.per_device_train_batch_size=8", "rlvr.deepspeed=zero3"],
        output=str(tmp_path / "out"),
        dry_run=True,
    )
    assert (
        "mini-batch 32 sequences = 8 per process x 2 learner process(es) on 1 node(s) x 2 accumulation step(s)"
        in text
    )
    # and over nodes: the same learner processes, 1 per node on 2 nodes
    text = run_recipe(
        tiny_recipe(),
        overrides=[
            "rlvr.num_processes=2",
            "rlvr.nodes=2",
            "rlvr.per_device_train_batch_size=8",
            "rlvr.deepspeed=zero3",
        ],
        output=str(tmp_path / "out2"),
        dry_run=True,
    )
    assert "8 per process x 2 learner process(es) on 2 node(s) x 2 accumulation step(s)" in text


def test_pipeline_owned_keys_are_refused(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: _stage(d, "dpo").update(model_name_or_path="somewhere"))
    _fails(path, tmp_path, ConfigError, contains=("stage dpo.model_name_or_path", "set by the recipe runner"))


def test_unknown_set_target(tiny_recipe, tmp_path):
    _fails(
        tiny_recipe(),
        tmp_path,
        ConfigError,
        overrides=["sfft.learning_rate=1"],
        contains=("sfft", "did you mean 'sft'"),
    )


def test_typo_in_defaults(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: d["defaults"].update(max_seq_lenght=64))
    _fails(path, tmp_path, ConfigError, contains=("defaults", "max_seq_lenght", "max_seq_length"))


def test_cli_prints_one_error_line_and_exits_2(tiny_recipe, tmp_path):
    path = tiny_recipe(lambda d: _stage(d, "dpo").update(learnig_rate=1e-4))
    out = tmp_path / "cli_out"
    res = subprocess.run(
        [sys.executable, "-m", "open_instruct.cli", "run", str(path), "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and "stage dpo" in lines[-1] and "learnig_rate" in lines[-1]
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_set_overrides_by_stage_wildcard_and_recipe_key():
    data = {
        "name": "r",
        "base_model": "x/y",
        "eval": {"dataset_mix": "e.yaml"},
        "stages": [
            {"name": "sft", "type": "sft"},
            {"name": "dpo", "type": "dpo"},
            {"name": "rl", "type": "rlvr"},
        ],
    }
    out = apply_recipe_overrides(
        data,
        [
            "sft.learning_rate=1e-5",
            "*.beta=0.2",
            "rl.rollout.num_engines=2",
            "eval.limit=20",
            "*.max_train_steps=3",
        ],
        "r.yaml",
    )
    sft, dpo, rl = out["stages"]
    assert float(sft["learning_rate"]) == 1e-5 and "beta" not in sft  # SFT has no beta
    assert dpo["beta"] == 0.2 and rl["beta"] == 0.2
    assert rl["rollout"] == {"num_engines": 2}
    assert out["eval"]["limit"] == 20
    assert sft["max_train_steps"] == dpo["max_train_steps"] == rl["max_train_steps"] == 3
    assert data["stages"][0] == {"name": "sft", "type": "sft"}  # the input is not modified


def test_policy_pairs_errors_name_the_key(tiny_recipe, tmp_path):
    """DPO's on-policy pairs: their prompt mixes and verifiers are checked like RLVR data, up front."""
    path = tiny_recipe(lambda d: _stage(d, "dpo")["policy_pairs"].update(prompts="data_mixes/nope.yaml"))
    _fails(path, tmp_path, DataError, contains=("stage dpo.policy_pairs.prompts", "nope.yaml", "not found"))

    path = tiny_recipe(lambda d: _stage(d, "dpo")["policy_pairs"].update(samles=4))
    _fails(path, tmp_path, ConfigError, contains=("stage dpo.policy_pairs", "unknown key 'samles'"))

    path = tiny_recipe(lambda d: _stage(d, "dpo").update(dataset_mix="data_mixes/tiny_preference.yaml"))
    _fails(path, tmp_path, ConfigError, contains=("stage dpo.dataset_mix", "policy_pairs.prompts"))

    rows = tmp_path / "prompts.jsonl"
    row = {
        "messages": [{"role": "user", "content": "1 + 2?"}],
        "ground_truth": "3",
        "dataset": "no_such_verifier",
    }
    rows.write_text("".join(json.dumps(row) + "\n" for _ in range(40)))
    path = tiny_recipe(lambda d: _stage(d, "dpo")["policy_pairs"].update(prompts=str(rows)))
    _fails(path, tmp_path, DataError, contains=("stage dpo", "no_such_verifier"))

    path = tiny_recipe(lambda d: _stage(d, "dpo")["policy_pairs"].update(limit=10))  # 10 pairs < batch 32
    _fails(path, tmp_path, DataError, contains=("stage dpo.policy_pairs.prompts: at most 10 pairs", "(32)"))

    path = tiny_recipe(lambda d: _stage(d, "dpo")["policy_pairs"].update(prompts="data_mixes/tiny_sft.yaml"))
    _fails(path, tmp_path, DataError, contains=("stage dpo.policy_pairs.prompts", "needs 'rlvr'"))
