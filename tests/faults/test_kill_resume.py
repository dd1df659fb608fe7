"""SIGKILL the SFT and DPO stages at random steps and in the middle of checkpoint writes; every rerun of the
same command resumes, nothing on disk is ever partial, and the final weights equal an
uninterrupted run's."""

import random

import pytest
import yaml
from safetensors.torch import load_file

from .killer import assert_nothing_partial, run_and_kill, run_to_end

pytestmark = pytest.mark.slow


STAGES = {
    "sft": dict(
        dataset_mix="data_mixes/tiny_sft.yaml",
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        packing=True,
    ),
    "dpo": dict(
        dataset_mix="data_mixes/tiny_preference.yaml",
        per_device_train_batch_size=8,
        total_batch_size=8,
        learning_rate=2e-4,
        loss_type="dpo",
        beta=0.1,
    ),
}


def _config(tmp_path, model_dir, stage, name):
    cfg = dict(
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / name),
        max_train_steps=14,
        checkpointing_steps=2,
        keep_last_checkpoints=2,
        max_seq_length=128,
        warmup_ratio=0.1,
        seed=5,
        **STAGES[stage],
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [stage, "--config", str(path)], tmp_path / name


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_stage_survives_sigkill_anywhere(tiny_model_dir, tmp_path, stage):
    args, ref_out = _config(tmp_path, tiny_model_dir, stage, "reference")
    run_to_end(args, tmp_path / "reference.log")

    args, out = _config(tmp_path, tiny_model_dir, stage, "killed")
    log = tmp_path / "killed.log"
    rng = random.Random(1234)
    kills = [
        dict(during="checkpoints/.tmp-step_*"),  # mid checkpoint write
        dict(at_step=rng.randint(5, 7), jitter_s=0.3),
        dict(at_step=rng.randint(9, 11), jitter_s=0.3),
        dict(during=".tmp-model"),  # while publishing the final model
    ]
    tried = 0
    for kill in kills:
        what = run_and_kill(args, out, log, rng=rng, **kill)
        tried += what == "killed"
        assert_nothing_partial(out)
    run_to_end(args, log)
    assert_nothing_partial(out)

    a, b = load_file(ref_out / "model.safetensors"), load_file(out / "model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"\n{stage} fault injection: {tried} kill points hit, max weight difference {worst:g}")
    assert tried >= 3, f"only {tried} of {len(kills)} kills happened before the run ended"
    assert worst <= 1e-6, f"after {tried} kills the final weights differ from uninterrupted by {worst:g}"
