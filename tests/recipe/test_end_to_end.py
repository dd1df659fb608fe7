"""The tiny recipe end to end, with reduced steps: the DPO stage is interrupted after its first
checkpoint; the rerun skips SFT, resumes DPO and runs RLVR; a third run skips everything.

One pipeline's worth of compute for the whole module (the runs share an output dir); the tests below
check the outcome from different sides. Real SFT/DPO engines, vLLM engines in Ray and reward_fns; no
network (the base model is built offline by the recipe)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from open_instruct.errors import ConfigError
from open_instruct.recipe import lineage as lin
from open_instruct.recipe.launch import reset_accelerate
from open_instruct.recipe.load import load_plan
from open_instruct.recipe.run import run_recipe
from open_instruct.recipe.state import assess_stages
from open_instruct.train import engine as engine_mod
from open_instruct.train.checkpoint import model_digest, verify_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STAGES = ("sft", "dpo", "rlvr")

# Small data through inline mixes (integer amounts = row counts), few steps, small evals.
OVERRIDES = [
    "sft.dataset_mix={kind: sft, sources: [{path: data_mixes/samples/sft_train.jsonl, amount: 512}]}",
    "sft.max_train_steps=6",
    "sft.per_device_train_batch_size=32",
    "sft.total_batch_size=32",
    # 6 SFT steps leave a model that answers nothing right, so it cannot make on-policy pairs: this run
    # trains DPO on the fixed sample pairs (policy_pairs itself: tests/train/test_policy_pairs.py)
    "dpo.policy_pairs.prompts=null",
    "dpo.policy_pairs.eval_prompts=null",
    "dpo.dataset_mix={kind: preference, sources: [{path: data_mixes/samples/preference_train.jsonl, amount: 64}]}",
    "dpo.eval_dataset_mix={kind: preference, sources: [{path: data_mixes/samples/preference_eval.jsonl, amount: 32}]}",
    "dpo.max_train_steps=4",
    "dpo.checkpointing_steps=2",
    "dpo.per_device_train_batch_size=8",
    "dpo.total_batch_size=8",
    "rlvr.total_episodes=32",
    "rlvr.num_unique_prompts_rollout=4",
    "rlvr.num_samples_per_prompt_rollout=4",
    "rlvr.per_device_train_batch_size=2",
    "rlvr.num_processes=2",  # the pipeline launches the RLVR learner as 2 processes (torchrun, gloo)
    "rlvr.eval_limit=8",
    "rlvr.rollout.multiprocess_engine=false",
    "eval.limit=16",
]


class SimulatedKill(Exception):
    pass


def _run(out: Path, extra: tuple[str, ...] = ()) -> str:
    buf = io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(buf):
            run_recipe(REPO / "recipes/tiny.yaml", overrides=OVERRIDES + list(extra), output=str(out))
    finally:
        os.chdir(cwd)
        print(buf.getvalue())  # shown by pytest on failure
    return buf.getvalue()


def _model_files(out: Path) -> dict[str, float]:
    return {
        str(p): p.stat().st_mtime_ns
        for s in STAGES
        for p in sorted((out / s).glob("*"))
        if p.is_file()
        and p.suffix in (".safetensors", ".json", ".jsonl", ".png")
        and p.name != "lineage.json"
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    os.environ.setdefault("OPEN_INSTRUCT_NO_PROGRESS", "1")

    # run 1: killed during DPO, right after its step-2 checkpoint is saved
    real_save = engine_mod.Engine.save_checkpoint

    def save_then_die(self, step, extra=None):
        path = real_save(self, step, extra)
        if self.run_dir.name == "dpo":
            raise SimulatedKill(f"killed after saving {path}")
        return path

    engine_mod.Engine.save_checkpoint = save_then_die
    try:
        with pytest.raises(SimulatedKill):
            _run(out)
    finally:
        engine_mod.Engine.save_checkpoint = real_save
        reset_accelerate()
    after_kill = {
        "sft_files": _model_files(out),
        "dpo_lineage": lin.read(out / "dpo"),
        "dpo_checkpoints": sorted(p.name for p in (out / "dpo" / "checkpoints").iterdir()),
        "dpo_finished": verify_model(out / "dpo"),
    }
    sft_mtimes = {k: v for k, v in after_kill["sft_files"].items() if "/sft/" in k}
    killed_copy = tmp_path_factory.mktemp("moved") / "killed-run"
    shutil.copytree(out, killed_copy)  # the interrupted run, moved elsewhere

    log2 = _run(out)  # run 2: resumes
    files2 = _model_files(out)
    log3 = _run(out)  # run 3: nothing to do
    files3 = _model_files(out)
    return {
        "out": out,
        "after_kill": after_kill,
        "sft_mtimes": sft_mtimes,
        "log2": log2,
        "files2": files2,
        "log3": log3,
        "files3": files3,
        "killed_copy": killed_copy,
    }


def test_interrupted_stage_left_a_checkpoint_and_a_running_lineage(runs):
    k = runs["after_kill"]
    assert k["dpo_finished"] is None
    assert k["dpo_checkpoints"] == ["step_2"]
    assert k["dpo_lineage"]["status"] == "running"


def test_rerun_skips_sft_and_resumes_dpo(runs):
    log2, out = runs["log2"], runs["out"]
    assert "stage sft: skipped" in log2
    assert "stage dpo (dpo): resuming from checkpoint step 2" in log2
    # SFT was not retrained: its files are untouched since run 1
    for path, mtime in runs["sft_mtimes"].items():
        if path.endswith((".safetensors", "metrics.jsonl")):
            assert runs["files2"][path] == mtime, path
    # DPO finished all its steps, once each (the resumed run continues at step 3)
    steps = [json.loads(x)["step"] for x in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    for s in STAGES:
        assert verify_model(out / s) is not None, s


def test_third_run_skips_everything_and_touches_nothing(runs):
    log3 = runs["log3"]
    for s in STAGES:
        assert f"stage {s}: skipped" in log3
    assert "training" not in log3 and "resuming" not in log3
    assert runs["files3"] == runs["files2"]  # no model, metrics, plot or eval file rewritten


def test_lineage_chains_parent_digests(runs):
    out = runs["out"]
    recs = {s: lin.read(out / s) for s in STAGES}
    assert recs["sft"]["parent"]["digest"] == model_digest(str(out / "base"))
    assert recs["dpo"]["parent"] == {
        "name_or_path": str(out / "sft"),
        "stage": "sft",
        "digest": recs["sft"]["model"]["digest"],
    }
    assert recs["rlvr"]["parent"]["digest"] == recs["dpo"]["model"]["digest"]
    for s, rec in recs.items():
        assert rec["status"] == "finished"
        assert rec["model"]["digest"] == verify_model(out / s)
        assert rec["config"]["model_name_or_path"] == rec["parent"]["name_or_path"]
        train = rec["data"]["train"]
        assert len(train["content_hash"]) == 64 and train["fingerprint"]
        assert {"torch", "transformers", "trl", "vllm", "deepspeed", "accelerate", "datasets", "ray"} <= set(
            rec["packages"]
        )
        assert rec["packages"]["torch"] and rec["packages"]["vllm"]
        assert "commit" in rec["git"]
    assert recs["sft"]["data"]["train"]["rows"] == 512
    gsm8k = recs["rlvr"]["rewards"]["gsm8k"]
    assert gsm8k["origin"] == "builtin" and len(gsm8k["source_sha256"]) == 64
    assert recs["dpo"]["config"]["max_train_steps"] == 4
    assert recs["rlvr"]["launch"] == {"num_processes": 2, "nodes": 1}
    assert "rlvr: launching" in runs["log2"] and "--nproc_per_node 2" in runs["log2"]


def test_summary_report_and_evals(runs):
    out, log2 = runs["out"], runs["log2"]
    assert "== recipe tiny: 3 stage(s)" in log2
    for s in ("base", *STAGES):
        assert any(line.startswith(s) for line in log2.splitlines()), s
    assert "preference accuracy" in log2 and "mean verifiable reward" in log2
    assert f"report: {out / 'report.md'}" in log2
    report = (out / "report.md").read_text()
    assert "![sft_curves](sft/sft_curves.png)" in report and "![dpo_curves](dpo/dpo_curves.png)" in report
    assert "rlvr_curves.png" in report
    base = json.loads((out / "base_eval.json").read_text())["summary"]
    assert base["prompts"] == 16
    for s in STAGES:
        ev = json.loads((out / s / "heldout_eval.json").read_text())
        assert ev["model_digest"] == verify_model(out / s)
        assert 0.0 <= ev["summary"]["reward_mean"] <= 1.0
    assert "preference_accuracy" in json.loads((out / "dpo" / "eval.json").read_text())


def test_changed_config_of_a_finished_stage_is_refused_before_training(runs, tmp_path):
    """A finished stage never gets silently reused or overwritten with another config."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with pytest.raises(ConfigError) as info:
            run_recipe(
                REPO / "recipes/tiny.yaml", overrides=[*OVERRIDES, "dpo.beta=0.2"], output=str(runs["out"])
            )
    finally:
        os.chdir(cwd)
    assert "stage dpo" in str(info.value) and "beta" in str(info.value)
    assert _model_files(runs["out"]) == runs["files3"]


def test_a_copied_run_directory_is_the_same_run(runs, tmp_path):
    """Configs record paths inside the run (output_dir, the parent stage's checkpoint); a run moved or
    copied elsewhere must still be recognised as finished, not refused as a different config."""
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(runs["out"], moved)
    before = _model_files(moved)
    log = _run(moved)
    for s in STAGES:
        assert f"stage {s}: skipped" in log
    assert "training" not in log and "resuming" not in log
    assert _model_files(moved) == before
    # while a real config change is still refused
    with pytest.raises(ConfigError, match=r"different config \(max_train_steps: 4 -> 5\)"):
        _run(moved, ("dpo.max_train_steps=5",))
    # and so is different data behind the same config (an inline mix with another amount)
    other = "sft.dataset_mix={kind: sft, sources: [{path: data_mixes/samples/sft_train.jsonl, amount: 500}]}"
    with pytest.raises(ConfigError, match=r"stage sft: .* different data"):
        _run(moved, (other,))


def test_a_moved_interrupted_run_resumes(runs):
    """The run killed mid-DPO, copied to another directory: SFT counts as done, DPO resumes from its
    step-2 checkpoint (assessed only; the resume itself is the same code as in the original dir)."""
    moved = runs["killed_copy"]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        plan = load_plan(REPO / "recipes/tiny.yaml", OVERRIDES, str(moved))
        assess_stages(plan, model_digest(str(moved / "base")))
    finally:
        os.chdir(cwd)
    assert [sp.status for sp in plan.stages] == ["done", "resume", "pending"]
