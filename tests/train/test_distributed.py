"""Several processes on CPU (gloo): DDP matches one process with the same effective batch, through the
real `open-instruct sft` CLI. ZeRO-3 over processes and nodes: tests/recipe/test_nodes.py."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _config(tmp_path, tiny_model_dir, name, **kw):
    cfg = dict(
        model_name_or_path=str(tiny_model_dir),
        dataset_mix="data_mixes/tiny_sft.yaml",
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_train_steps=4,
        max_seq_length=128,
        warmup_ratio=0.0,
        seed=1,
    )
    cfg.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config, nproc):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}  # a clean launch
    env.update(OPEN_INSTRUCT_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, "-m", "open_instruct.cli", "sft", "--config", str(config)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            "29533",
            "-m",
            "open_instruct.cli",
            "sft",
            "--config",
            str(config),
        ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def _max_diff(a_dir, b_dir):
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _losses(d):
    return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]


def test_ddp_two_processes_match_one_process(tiny_model_dir, tmp_path):
    _launch(_config(tmp_path, tiny_model_dir, "one", gradient_accumulation_steps=2), 1)
    _launch(_config(tmp_path, tiny_model_dir, "ddp", gradient_accumulation_steps=1), 2)
    diff = _max_diff(tmp_path / "one", tmp_path / "ddp")
    assert diff < 1e-5, f"2-process DDP differs from 1 process by {diff:g}"
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "ddp"), rel=1e-5)
    # ZeRO-3 over two processes (and two nodes): tests/recipe/test_nodes.py
