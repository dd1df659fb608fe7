"""A recipe stage over two nodes, simulated on this machine: the same `open-instruct run` command on
"node 0" and "node 1" (NODE_RANK, MASTER_ADDR, MASTER_PORT set, as scripts/slurm_recipe.sbatch sets
them), sharing the run directory. Each node launches the stage with `torchrun --nnodes 2 --node_rank N`
(gloo rendezvous on 127.0.0.1); DeepSpeed ZeRO-3 shards over both. Node 0 writes the lineage and the
report. The model equals the one-process run's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(tmp_path: Path, base: Path, name: str, **stage) -> Path:
    recipe = {
        "name": name,
        "base_model": str(base),
        "output_dir": str(tmp_path / name),
        "eval": None,
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset_mix": str(REPO / "data_mixes/tiny_sft.yaml"),
                "chat_template": "tulu",
                "per_device_train_batch_size": 8,
                "total_batch_size": 16,
                "learning_rate": 3e-3,
                "max_train_steps": 4,
                "max_seq_length": 128,
                "warmup_ratio": 0.0,
                "deepspeed": "zero3",
                "seed": 1,
                **stage,
            }
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OPEN_INSTRUCT_NO_PROGRESS="1", OMP_NUM_THREADS="1", **extra)
    return env


def _max_diff(a_dir: Path, b_dir: Path) -> float:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_node_sft_stage_under_zero3_matches_one_process(tiny_model_dir, tmp_path):
    cli = [sys.executable, "-m", "open_instruct.cli", "run"]
    one = _recipe(tmp_path, tiny_model_dir, "one", num_processes=1)
    res = subprocess.run(
        [*cli, str(one)], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]

    two = _recipe(tmp_path, tiny_model_dir, "two", num_processes=2, nodes=2)
    port = str(_free_port())
    nodes = [
        subprocess.Popen(
            [*cli, str(two)],
            env=_env(NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs[0][-3000:] + "\n----\n" + logs[1][-3000:]
    for rank, log in enumerate(logs):
        assert f"--nnodes 2 --node_rank {rank} --master_addr 127.0.0.1 --master_port {port}" in log, log[
            -2000:
        ]
    assert "report:" in logs[0] and "report:" not in logs[1]  # node 0 alone writes the lineage and report

    out1, out2 = tmp_path / "one" / "sft", tmp_path / "two" / "sft"
    lineage = json.loads((out2 / "lineage.json").read_text())
    assert lineage["status"] == "finished" and lineage["launch"] == {"num_processes": 2, "nodes": 2}
    diff = _max_diff(out1, out2)
    moved = _max_diff(tiny_model_dir, out1)
    print(f"\nSFT 2 nodes (ZeRO-3) vs 1 process (ZeRO-3): max diff {diff:g} (moved {moved:g})")
    assert moved > 1e-3
    assert diff <= 5e-7, f"2 nodes differ from 1 process by {diff:g}"
    # and the 2-node model is a normal HF checkpoint
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out2)
