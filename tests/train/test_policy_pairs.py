"""DPO on the policy's own answers (`policy_pairs`): real vLLM sampling from the SFT'd tiny model,
real gsm8k verifier, pairs written once and reused, held-out preference accuracy before/after."""

import json
import os

import pytest

from open_instruct.config import from_dict
from open_instruct.train.dpo import DPOConfig, run_dpo
from reward_fns import RewardRunner

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _cfg(model, out, **pairs):
    settings = dict(
        prompts="data_mixes/tiny_rlvr.yaml",
        eval_prompts="data_mixes/tiny_rlvr_eval.yaml",
        limit=240,
        samples=6,
        max_tokens=32,
        max_prompt_length=64,
        rollout={"multiprocess_engine": False, "kv_cache_gib": 0.25},
    )
    settings.update(pairs)
    return from_dict(
        DPOConfig,
        dict(
            model_name_or_path=str(model),
            output_dir=str(out),
            policy_pairs=settings,
            loss_type="dpo",
            beta=0.1,
            nll_coef=1.0,
            learning_rate=5e-5,
            per_device_train_batch_size=16,
            total_batch_size=16,
            max_train_steps=6,
            max_seq_length=128,
            seed=0,
        ),
    )


def _answer(row) -> str:
    return row[-1]["content"]


def test_pairs_are_the_policys_right_and_wrong_answers_and_are_reused(sft_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "dpo"
    run_dpo(_cfg(sft_model_dir, out))
    made = out / "policy_pairs"
    meta = json.loads((made / "train.json").read_text())
    rows = [json.loads(x) for x in (made / "train.jsonl").read_text().splitlines()]
    assert meta["prompts"] == 240 and meta["pairs"] == len(rows) > 16
    # every prompt is all right, all wrong, or gave exactly one pair (pairs_per_prompt 1)
    assert meta["prompts_all_right"] + meta["prompts_all_wrong"] + meta["pairs"] == 240
    assert 0.0 < meta["sample_accuracy"] < 1.0

    runner = RewardRunner()
    try:
        for side, want in (("chosen", 1.0), ("rejected", 0.0)):
            truths = [r["chosen"][0]["content"] for r in rows]  # "What is a + b?"
            sums = [str(sum(int(x) for x in q.rstrip("?").split("is ")[1].split(" + "))) for q in truths]
            scores = runner.score([_answer(r[side]) for r in rows], sums, ["gsm8k"] * len(rows)).scores
            assert all(s == want for s in scores), f"a {side} answer scored {scores}"
    finally:
        runner.close()
    for r in rows:
        assert r["chosen"][:-1] == r["rejected"][:-1] and _answer(r["chosen"]) != _answer(r["rejected"])

    ev = json.loads((out / "eval.json").read_text())
    held_out = json.loads((made / "eval.json").read_text())
    assert ev["num_pairs"] == held_out["pairs"] and held_out["prompts"] == 200
    assert (
        0.0 < ev["preference_accuracy"]["before"] < 1.0
    )  # the policy's own mistakes are not all ranked right

    # A second run into a fresh output dir with the files copied in: the same key, so no engine starts.
    again = tmp_path / "again"
    (again / "policy_pairs").mkdir(parents=True)
    for name in ("train.jsonl", "train.json", "eval.jsonl", "eval.json"):
        (again / "policy_pairs" / name).write_bytes((made / name).read_bytes())
    from open_instruct.generation import policy_pairs

    def no_engine(self):
        raise AssertionError("the pairs should have been reused, not sampled again")

    monkeypatch.setattr(policy_pairs.PairMaker, "_engine", no_engine)
    stamp = os.stat(again / "policy_pairs" / "train.jsonl").st_mtime_ns
    run_dpo(_cfg(sft_model_dir, again))
    assert os.stat(again / "policy_pairs" / "train.jsonl").st_mtime_ns == stamp

    # Other sampling settings: a different key, so the stale files are not reused.
    with pytest.raises(AssertionError, match="reused, not sampled again"):
        run_dpo(_cfg(sft_model_dir, tmp_path / "other", samples=4))
