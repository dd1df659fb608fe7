"""SIGKILL the RLVR stage -- the learner process and with it its whole process tree: Ray's GCS and
raylet, the Ray worker holding the vLLM engine -- at a random step and mid publish of the policy and
value model (a kill mid checkpoint write: tests/faults/test_kill_resume.py, the same checkpoint code).
Each rerun of the same
command resumes from the last sealed checkpoint (policy, value model, both optimizers, scheduler, RNG,
prompt cursor), no process outlives a kill, and the final policy and value model match an uninterrupted
run's within 1e-5 (the deterministic settings of the RLVR stage: fixed seed, no overlap, fp32 on CPU).
The run is PPO with a value model and a KL reference (tests/rl/ppo_run.py), so every piece of RL state
is in the checkpoint the rerun resumes from."""

import json
import random
import uuid

import pytest
from safetensors.torch import load_file

from tests.rl.ppo_run import ppo_config

from .killer import assert_nothing_partial, run_and_kill, run_to_end, wait_until_gone

pytestmark = pytest.mark.slow


def _max_diff(a_file, b_file) -> float:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_rlvr_survives_sigkill_of_its_process_tree(ppo_one_process, sft_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the uninterrupted run
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    tag = uuid.uuid4().hex
    config, out = ppo_config(tmp_path, sft_model_dir, "killed")
    args = ["rlvr", "--config", str(config)]
    log = tmp_path / "killed.log"
    rng = random.Random(4321)
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

    # the value model was published with the policy: in the manifest that a kill mid-publish left intact
    assert "value_model/model.safetensors" in json.loads((out / "model_manifest.json").read_text())["files"]
    ref = ppo_one_process
    policy = _max_diff(ref / "model.safetensors", out / "model.safetensors")
    value = _max_diff(ref / "value_model/model.safetensors", out / "value_model/model.safetensors")
    moved = _max_diff(sft_model_dir / "model.safetensors", ref / "model.safetensors")
    print(
        f"\nrlvr fault injection: {tried} kill points hit, up to {max(len(a) for a in alive)} processes "
        f"killed each time, none left behind; max difference to uninterrupted: policy {policy:g} "
        f"(moved {moved:g}), value {value:g}"
    )
    assert tried >= 2, f"only {tried} of {len(kills)} kills happened before the run ended"
    assert moved > 1e-4, "the policy barely changed: the comparison would be vacuous"
    assert policy <= 1e-5 and value <= 1e-5, f"after {tried} kills: policy {policy:g}, value {value:g}"
