"""The RLVR learner over two processes with DeepSpeed ZeRO-3 (torchrun, gloo; the shipped recipes'
setting) trains the same model as one plain process: process 0 drives the vLLM engine and the
rewards and broadcasts each scored batch, each process runs the no-grad forwards (old log-probs,
reference, values) on half of the rows and all-gathers them, then trains on half of every
mini-batch; the reference runs in its own optimizer-less DeepSpeed engine, the value model's fresh
head is zeroed through the shards, and full weights are gathered for every sync and the final save.
PPO with a value model and a KL reference, 2 epochs x 2 mini-batches, a checkpoint and a weight sync
in between: every sharded path is on the line."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _config(tmp_path, model_dir, name, **kw):
    cfg = dict(
        model_name_or_path=str(model_dir),
        dataset_mix="data_mixes/tiny_rlvr.yaml",
        output_dir=str(tmp_path / name),
        algorithm="ppo",
        num_unique_prompts_rollout=8,
        num_samples_per_prompt_rollout=4,
        per_device_train_batch_size=4,
        num_epochs=2,
        num_mini_batches=2,
        max_train_steps=2,
        checkpointing_steps=1,
        response_length=24,
        max_prompt_length=64,
        learning_rate=1e-4,
        beta=0.05,
        seed=5,
        preflight_prompts=4,
        rollout={"multiprocess_engine": False, "kv_cache_gib": 0.25},
        **kw,
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / name


def _run(config, nproc, port=29541):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OPEN_INSTRUCT_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cli = ["-m", "open_instruct.cli", "rlvr", "--config", str(config)]
    if nproc > 1:
        cli = [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            *cli,
        ]
    res = subprocess.run([sys.executable, *cli], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _max_diff(a_file, b_file):
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_learner_processes_train_the_same_model_as_one(sft_model_dir, tmp_path):
    one_cfg, one = _config(tmp_path, sft_model_dir, "one")
    two_cfg, two = _config(tmp_path, sft_model_dir, "two", deepspeed="zero3")
    _run(one_cfg, 1)
    _run(two_cfg, 2)

    r1, r2 = _rows(one), _rows(two)
    assert [r["step"] for r in r2] == [r["step"] for r in r1] == [1, 2]  # process 0 alone logs
    # step 1 generates from the same weights with the same seed: the same batch and the same scores
    assert r2[0]["reward_mean"] == r1[0]["reward_mean"]
    assert r2[0]["response_length"] == r1[0]["response_length"]
    for key in ("policy_loss", "value_loss", "kl"):
        assert r2[0][key] == pytest.approx(r1[0][key], rel=1e-4, abs=1e-6), key

    # trained, and trained alike (summation order differs between 1 and 2 processes)
    moved = _max_diff(sft_model_dir / "model.safetensors", one / "model.safetensors")
    assert moved > 1e-4, f"the policy barely changed ({moved:g}); the comparison would be vacuous"
    policy_diff = _max_diff(one / "model.safetensors", two / "model.safetensors")
    value_diff = _max_diff(
        one / "value_model" / "model.safetensors", two / "value_model" / "model.safetensors"
    )
    print(
        f"\n1 process vs 2 (ZeRO-3): policy max diff {policy_diff:g} (moved {moved:g}), value {value_diff:g}"
    )
    assert policy_diff < 1e-5 and value_diff < 1e-5
    assert (two / "checkpoints" / "step_1" / "pytorch_model").is_dir(), "not a DeepSpeed checkpoint"
