"""The RLVR learner as two processes under DeepSpeed ZeRO-2 on one node (torchrun), the layout of the
Tülu 3.1 GRPO recipe (12 processes, ZeRO-2) shrunk: PPO with a value model and a KL reference ends with
the weights the shared one-process run trains (tests/rl/ppo_run.py), and the reference is sharded over
the processes (a ZeRO-3 inference engine) instead of a whole replica on each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.rl.ppo_run import REPO, ppo_config, ray_env

pytestmark = pytest.mark.slow


def _max_diff(a_file: Path, b_file: Path) -> float:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_under_zero2_train_the_same_model_with_a_sharded_reference(
    ppo_one_process, sft_model_dir, tmp_path
):
    config, out = ppo_config(tmp_path, sft_model_dir, "zero2", deepspeed="zero2")
    env = dict(ray_env(), OPEN_INSTRUCT_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "open_instruct.cli", "rlvr", "--config", str(config)]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]

    text = res.stdout + res.stderr + "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    shards = re.findall(
        r"frozen model sharded over 2 process\(es\) .*: ([\d,]+) of its ([\d,]+) parameters", text
    )
    assert shards, "the reference was not sharded"
    here, total = (int(x.replace(",", "")) for x in shards[0])
    assert here <= total / 2 + 1024, (here, total)  # half of it, up to DeepSpeed's padding

    policy = _max_diff(ppo_one_process / "model.safetensors", out / "model.safetensors")
    value = _max_diff(
        ppo_one_process / "value_model/model.safetensors", out / "value_model/model.safetensors"
    )
    moved = _max_diff(sft_model_dir / "model.safetensors", ppo_one_process / "model.safetensors")
    print(f"\nRLVR, 2 processes ZeRO-2 vs 1: policy {policy:g}, value {value:g} (moved {moved:g})")
    assert moved > 1e-4, "the policy barely changed: the comparison would be vacuous"
    assert policy <= 5e-7 and value <= 5e-7
