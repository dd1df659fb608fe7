"""The RLVR stage end to end with real vLLM engines in Ray, real rewards and the tiny model on CPU."""

import json

import pytest

from open_instruct.config import from_dict
from open_instruct.errors import DataError
from open_instruct.rl import rlvr as rlvr_mod
from open_instruct.rl.rlvr import RLVRConfig, run_rlvr

pytestmark = pytest.mark.slow

ENGINE = {"multiprocess_engine": False, "kv_cache_gib": 1}


def _cfg(model, out, **kw):
    base = dict(
        model_name_or_path=str(model),
        dataset_mix="data_mixes/tiny_rlvr.yaml",
        output_dir=str(out),
        algorithm="grpo",
        num_unique_prompts_rollout=8,
        num_samples_per_prompt_rollout=4,
        per_device_train_batch_size=16,
        num_epochs=1,
        num_mini_batches=1,
        max_train_steps=4,
        response_length=24,
        max_prompt_length=64,
        learning_rate=3e-4,
        beta=0.0,
        seed=11,
        rollout=ENGINE,
    )
    base.update(kw)
    return from_dict(RLVRConfig, base)


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_raises_heldout_reward(sft_model_dir, tmp_path, ray_session, monkeypatch):
    """...and logs every step to wandb (offline: no key here), as metrics.jsonl has it."""
    from tests.test_wandb import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()
    out = tmp_path / "grpo"
    # the tiny recipe's GRPO settings (recipes/tiny.yaml explains them), 40 steps
    run_rlvr(
        _cfg(
            sft_model_dir,
            out,
            num_unique_prompts_rollout=16,
            num_samples_per_prompt_rollout=8,
            per_device_train_batch_size=32,
            num_mini_batches=4,
            max_train_steps=40,
            learning_rate=5e-5,
            lr_scheduler_type="cosine",
            response_length=32,
            verification_reward=1.0,
            non_stop_penalty=False,
            eval_dataset_mix="data_mixes/tiny_rlvr_eval.yaml",
            eval_limit=200,
            eval_temperature=1.0,
            wandb_project="test",
        )
    )
    evals = json.loads((out / "eval.json").read_text())
    before, after = evals["before"]["eval/reward_mean"], evals["after"]["eval/reward_mean"]
    train = [r["reward_mean"] for r in _rows(out) if "reward_mean" in r]
    assert after > before + 0.03, (
        f"held-out mean verifiable reward (200 prompts, sampled) did not rise: {before:.3f} -> {after:.3f}; "
        f"train reward per step {[round(x, 2) for x in train]}"
    )
    assert (out / "rlvr_curves.png").exists() and (out / "model_manifest.json").exists()
    (run,) = offline_runs(tmp_path / "wandb_dir")
    assert run["run"]["job_type"] == "rlvr-grpo"
    assert len(run["history"]) == 41  # step 0 (the held-out eval before training) and 40 RL steps
    rows = {r["step"]: r for r in _rows(out)}
    assert [h["_step"] for h in run["history"]] == sorted(rows)
    for h in run["history"]:
        for key in ("eval/reward_mean", "reward_mean", "kl", "response_length", "policy_loss", "lr"):
            if key in rows[h["_step"]]:
                assert h[key] == pytest.approx(rows[h["_step"]][key], rel=1e-6), (h["_step"], key)


# Exact resume of an interrupted RLVR run: tests/faults/test_kill_rlvr.py (SIGKILL at a step, mid checkpoint,
# mid publish) and tests/rl/test_rlvr_nodes.py (a killed node of a two-node learner).


def test_ppo_with_value_model_and_non_eos_penalty(sft_model_dir, tmp_path, ray_session):
    out = tmp_path / "ppo"
    run_rlvr(
        _cfg(
            sft_model_dir,
            out,
            algorithm="ppo",
            num_samples_per_prompt_rollout=1,
            per_device_train_batch_size=4,
            num_epochs=2,
            num_mini_batches=2,
            max_train_steps=2,
            response_length=6,
            beta=0.05,
            learning_rate=1e-4,
        )
    )  # 6 tokens: most answers are cut
    rows = [r for r in _rows(out) if "reward_mean" in r]
    assert len(rows) == 2
    for key in (
        "value_loss",
        "explained_variance",
        "clip_fraction",
        "kl",
        "entropy",
        "gen_tokens_per_s",
        "train_tokens_per_s",
        "weight_sync_s",
        "reward/gsm8k/accuracy",
    ):
        assert key in rows[-1], key
    assert rows[0]["non_eos_rate"] > 0.5
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(out / "value_model")


def test_unknown_verifier_fails_before_any_engine_starts(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "prompts.jsonl"
    row = {
        "messages": [{"role": "user", "content": "What is 1 + 1?"}],
        "ground_truth": "2",
        "dataset": "no_such_verifier",
    }
    data.write_text(json.dumps(row) + "\n")
    from open_instruct.generation.group import RolloutGroup

    monkeypatch.setattr(RolloutGroup, "__init__", lambda self, cfg: pytest.fail("engines started"))
    monkeypatch.setattr(rlvr_mod, "Learner", lambda *a, **k: pytest.fail("the model was loaded first"))
    with pytest.raises(DataError, match="no_such_verifier"):
        run_rlvr(
            _cfg(
                tiny_model_dir,
                tmp_path / "o",
                dataset_mix=str(data),
                num_unique_prompts_rollout=1,
                per_device_train_batch_size=4,
            )
        )
