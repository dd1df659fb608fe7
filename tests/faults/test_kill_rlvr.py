"""SIGKILL the RLVR stage -- the learner process and with it its whole process tree: Ray's GCS and
raylet, the Ray worker holding the vLLM engine -- at a random step and mid publish (a kill mid
checkpoint write: tests/faults/test_kill_resume.py, the same checkpoint code). Each rerun of the same
command resumes from the last sealed checkpoint (policy, optimizer, scheduler, RNG, prompt cursor), no
process outlives a kill, and the final weights match an
uninterrupted run's within 1e-5 (the deterministic settings of the RLVR stage: fixed seed, no
overlap, fp32 on CPU)."""

import random
import uuid

import pytest
import yaml
from safetensors.torch import load_file

from .killer import assert_nothing_partial, run_and_kill, run_to_end, wait_until_gone

pytestmark = pytest.mark.slow


def _config(tmp_path, model_dir, name):
    cfg = dict(
        model_name_or_path=str(model_dir),
        dataset_mix="data_mixes/tiny_rlvr.yaml",
        output_dir=str(tmp_path / name),
        algorithm="grpo",
        num_unique_prompts_rollout=8,
        num_samples_per_prompt_rollout=4,
        per_device_train_batch_size=16,
        num_mini_batches=2,
        max_train_steps=4,
        checkpointing_steps=2,
        keep_last_checkpoints=2,
        response_length=24,
        max_prompt_length=64,
        learning_rate=5e-5,
        beta=0.01,  # exercise the reference model's state too
        seed=3,
        rollout={"multiprocess_engine": False, "kv_cache_gib": 0.25},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["rlvr", "--config", str(path)], tmp_path / name


def test_rlvr_survives_sigkill_of_its_process_tree(sft_model_dir, tmp_path):
    tag = uuid.uuid4().hex
    args, ref_out = _config(tmp_path, sft_model_dir, "reference")
    run_to_end(args, tmp_path / "reference.log", tag=tag)

    args, out = _config(tmp_path, sft_model_dir, "killed")
    log = tmp_path / "killed.log"
    rng = random.Random(4321)
    # (a kill mid checkpoint write is the SFT/DPO fault tests' job: the same Engine.save_checkpoint)
    kills = [
        dict(at_step=rng.randint(1, 2), jitter_s=0.5),
        dict(during=".tmp-model"),  # while publishing the final model
    ]
    tried, survivors, alive = 0, [], []
    for kill in kills:
        what = run_and_kill(args, out, log, rng=rng, tag=tag, timeout_s=400, alive_at_kill=alive, **kill)
        tried += what == "killed"
        survivors += wait_until_gone(tag)
        assert_nothing_partial(out)
    run_to_end(args, log, tag=tag)
    assert_nothing_partial(out)
    # the check can see a run's process tree: the learner, Ray's GCS and raylet, the engine's Ray worker
    assert max(len(a) for a in alive) >= 4, f"expected a process tree at the kill, saw {alive}"
    assert not survivors, "processes outlived the SIGKILL of their run:\n" + "\n".join(survivors)

    a, b = load_file(ref_out / "model.safetensors"), load_file(out / "model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(
        f"\nrlvr fault injection: {tried} kill points hit, up to {max(len(a) for a in alive)} processes "
        f"killed each time, none left behind; max weight difference {worst:g}"
    )
    assert tried >= 2, f"only {tried} of {len(kills)} kills happened before the run ended"
    assert worst <= 1e-5, f"after {tried} kills the final weights differ from uninterrupted by {worst:g}"
