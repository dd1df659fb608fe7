"""wandb through Tracker and through each stage's CLI: real offline runs, read back from the `.wandb`
transaction logs with the installed SDK (`wandb leet inspect --json`). No network: no credentials,
offline mode, wandb's error reporting off, every wandb directory under tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from open_instruct.track import Tracker, read_metrics, resolve_wandb_mode

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path, monkeypatch):
    """No credentials, no server, wandb's files under tmp_path; wandb set up afresh per test (it
    reads its environment once per process)."""
    import wandb

    wandb.teardown()
    saved = dict(os.environ)  # stages set ACCELERATE_* variables in-process
    for var in list(os.environ):
        if var.startswith("WANDB_"):
            monkeypatch.delenv(var)
    home = tmp_path / "wandb_home"
    for var, sub in (
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("NETRC", str(home / "netrc"))  # no `wandb login` key (the file does not exist)
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # wandb's own telemetry would go online
    yield
    wandb.teardown()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one torch thread is faster than two fighting
    yield
    torch.set_num_threads(old)


def offline_runs(wandb_dir: Path) -> list[dict]:
    """Each offline run under `wandb_dir`, oldest first: {"run": the run record, "history": [items]}."""
    runs = []
    for path in sorted(Path(wandb_dir).glob("wandb/offline-run-*/run-*.wandb")):
        proc = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, WANDB_MODE="offline"),
        )
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        history = [
            r["history"]["item"] | {"_step": int(r["history"]["step"]["num"])}
            for r in records
            if r["type"] == "history"
        ]
        runs.append({"run": run, "history": history})
    return runs


def _same_as_metrics_jsonl(history: list[dict], out: Path, keys: tuple[str, ...]) -> None:
    rows = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert [h["_step"] for h in history] == sorted(rows)
    for h in history:
        for k in keys:
            assert h[k] == pytest.approx(rows[h["_step"]][k], rel=1e-6), (h["_step"], k)


# ---- Tracker --------------------------------------------------------------------------------------


def test_tracker_logs_offline_without_credentials_and_a_resume_continues_the_run(
    tmp_path, capfd, monkeypatch
):
    import openai  # noqa: F401  vLLM imports it in every RLVR run: wandb then advertises Weave on the console

    monkeypatch.delenv("WANDB_DISABLE_WEAVE", raising=False)
    run_dir = tmp_path / "sft"
    tr = Tracker(run_dir, total_steps=6, wandb_project="proj", config={"learning_rate": 1e-3}, desc="sft")
    assert tr.wandb_mode == "offline"  # no key anywhere: offline, and nothing asked
    for s in range(1, 6):  # killed after step 5; the newest checkpoint is step 3
        tr.log(s, {"loss": 1.0 / s, "lr": 1e-3, "bad": float("inf")})
    tr.close()
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert tr.wandb_run_id == run_id

    tr = Tracker(run_dir, total_steps=6, start_step=3, wandb_project="proj", desc="sft")
    for s in range(4, 7):
        tr.log(s, {"loss": 2.0 / s, "lr": 1e-3})
    tr.close()
    assert tr.wandb_run_id == run_id

    first, resumed = offline_runs(run_dir)  # WANDB_DIR unset: beside the stage's outputs
    assert first["run"]["run_id"] == resumed["run"]["run_id"] == run_id
    assert first["run"]["project"] == "proj" and first["run"]["job_type"] == "sft"
    assert first["run"]["config"]["update"]["learning_rate"] == 1e-3
    assert [h["_step"] for h in first["history"]] == [1, 2, 3, 4, 5]
    assert [h["_step"] for h in resumed["history"]] == [4, 5, 6]
    assert resumed["history"][-1]["loss"] == pytest.approx(2.0 / 6)
    assert all("bad" not in h and "time" not in h for h in first["history"])  # inf: not a number to plot
    out = capfd.readouterr()
    assert "wandb:" not in out.err + out.out  # wandb's banners and summaries stay off the console


def test_a_stage_that_died_in_this_process_is_finished_and_continued(tmp_path):
    run_dir = tmp_path / "dpo"
    dead = Tracker(run_dir, total_steps=4, wandb_project="proj")
    dead.log(1, {"loss": 1.0})
    dead.log(2, {"loss": 0.9})  # an exception left the loop without close()
    tr = Tracker(run_dir, total_steps=4, start_step=1, wandb_project="proj")
    for s in (2, 3, 4):
        tr.log(s, {"loss": 1.0 - 0.1 * s})
    tr.close()
    assert tr.wandb_run_id == dead.wandb_run_id
    first, second = offline_runs(run_dir)
    assert [h["_step"] for h in first["history"]] == [1, 2]
    assert [h["_step"] for h in second["history"]] == [2, 3, 4]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]


def test_wandb_environment_variables_are_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb_dir").mkdir()
    tr = Tracker(tmp_path / "dpo", total_steps=2, desc="dpo")  # no project in the config
    tr.log(1, {"loss": 0.5})
    tr.close()
    assert not (tmp_path / "dpo" / "wandb").exists()
    (run,) = offline_runs(tmp_path / "wandb_dir")
    assert (run["run"]["project"], run["run"]["entity"]) == ("from-env", "my-team")
    assert [h["_step"] for h in run["history"]] == [1]

    monkeypatch.setenv("WANDB_MODE", "disabled")
    tr = Tracker(tmp_path / "off", total_steps=1, wandb_project="p")
    tr.log(1, {"loss": 0.5})
    tr.close()
    assert tr.wandb_mode is None and read_metrics(tmp_path / "off" / "metrics.jsonl")[0]["loss"] == 0.5
    assert len(offline_runs(tmp_path / "wandb_dir")) == 1


def test_online_only_with_credentials_found_without_asking_the_server(tmp_path, monkeypatch):
    # a server of our own naming, so a stored key is looked up for it (nothing is contacted)
    monkeypatch.setenv("WANDB_BASE_URL", "http://localhost:8080")
    assert resolve_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode() == "offline"  # asked for online without a key: offline, no prompt
    monkeypatch.delenv("WANDB_MODE")

    netrc = Path(os.environ["NETRC"])
    netrc.parent.mkdir(parents=True, exist_ok=True)
    netrc.write_text("machine localhost:8080\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode() == "online"  # a key stored by `wandb login`
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode() == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    netrc.unlink()

    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    assert resolve_wandb_mode() == "online"
    monkeypatch.setenv("WANDB_API_KEY", "not a key")
    assert resolve_wandb_mode() == "offline"  # a malformed key: warned about, logged offline


# ---- the stages through the CLI ---------------------------------------------------------------


def _run_cli(stage: str, cfg: dict, tmp_path: Path, monkeypatch) -> Path:
    from open_instruct.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir(exist_ok=True)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main([stage, "--config", str(path), "--set", "wandb_project=test"]) == 0
    return Path(cfg["output_dir"])


def test_sft_stage_logs_every_step_to_wandb(tiny_model_dir, tmp_path, monkeypatch):
    cfg = dict(
        model_name_or_path=str(tiny_model_dir),
        dataset_mix=str(REPO / "data_mixes/tiny_sft.yaml"),
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_train_steps=4,
        max_seq_length=128,
        seed=3,
    )
    out = _run_cli("sft", cfg, tmp_path, monkeypatch)
    (run,) = offline_runs(tmp_path / "wandb_dir")
    assert (
        run["run"]["project"] == "test" and run["run"]["run_id"] == (out / "wandb_run_id").read_text().strip()
    )
    assert run["run"]["config"]["update"]["learning_rate"] == 3e-3
    _same_as_metrics_jsonl(run["history"], out, ("loss", "lr", "grad_norm", "tokens_per_s"))
    assert len(run["history"]) == 4


def test_dpo_stage_logs_every_step_to_wandb(tiny_model_dir, tmp_path, monkeypatch):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        "\n".join((REPO / "data_mixes/samples/preference_train.jsonl").read_text().splitlines()[:12]) + "\n"
    )
    cfg = dict(
        model_name_or_path=str(tiny_model_dir),
        dataset_mix=str(prefs),
        output_dir=str(tmp_path / "dpo"),
        loss_type="dpo",
        beta=0.1,
        per_device_train_batch_size=4,
        total_batch_size=4,
        max_train_steps=3,
        max_seq_length=128,
        learning_rate=1e-3,
        warmup_ratio=0.0,
    )
    out = _run_cli("dpo", cfg, tmp_path, monkeypatch)
    (run,) = offline_runs(tmp_path / "wandb_dir")
    assert run["run"]["job_type"] == "dpo"
    keys = ("loss", "dpo_loss", "rewards/margin", "rewards/accuracy", "logps/chosen", "lr")
    _same_as_metrics_jsonl(run["history"], out, keys)
    assert len(run["history"]) == 3


# The RLVR stage's wandb run is checked by tests/rl/test_rlvr.py::test_grpo_raises_heldout_reward (a 40-step run).
