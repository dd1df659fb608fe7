"""One small PPO run (value model, KL reference, a checkpoint after every step) shared by the tests
that stop an RLVR run and check the rerun ends with the model an uninterrupted run trains: the
SIGKILL test of one process (tests/faults/test_kill_rlvr.py) and the lost-node test of a two-node
learner (tests/rl/test_rlvr_nodes.py). The uninterrupted one-process run is the session fixture
`ppo_one_process` (tests/conftest.py): one run for both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def ppo_config(tmp_path: Path, model_dir: Path, name: str, **kw) -> tuple[Path, Path]:
    """Write `<tmp_path>/<name>.yaml`; returns (config path, output dir)."""
    cfg = dict(
        model_name_or_path=str(model_dir),
        dataset_mix=str(REPO / "data_mixes/tiny_rlvr.yaml"),
        output_dir=str(tmp_path / name),
        algorithm="ppo",  # with a value model
        beta=0.05,  # and a KL reference
        num_unique_prompts_rollout=8,
        num_samples_per_prompt_rollout=2,
        per_device_train_batch_size=4,
        num_epochs=2,
        num_mini_batches=2,
        max_train_steps=3,
        checkpointing_steps=1,
        keep_last_checkpoints=3,
        response_length=16,
        max_prompt_length=64,
        learning_rate=1e-4,
        seed=5,
        preflight_prompts=4,
        dist_timeout_s=60,
        rollout={"multiprocess_engine": False, "kv_cache_gib": 0.25},
    )
    cfg.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / name


def ray_env() -> dict:
    """The environment for a run that starts or joins a throwaway local Ray cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("ACCELERATE_")}
    env["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60 asks for a token otherwise
    return env


def run_one_process(tmp_path: Path, model_dir: Path) -> Path:
    """The uninterrupted reference: `open-instruct rlvr` as one plain process with a local Ray."""
    config, out = ppo_config(tmp_path, model_dir, "one")
    env = dict(ray_env(), OPEN_INSTRUCT_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "open_instruct.cli", "rlvr", "--config", str(config)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return out
