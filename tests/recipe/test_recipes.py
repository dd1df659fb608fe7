"""Every shipped recipe loads, validates and plans offline (hub ids are fine in a dry run)."""

from pathlib import Path

import pytest

from open_instruct.recipe.load import load_plan
from open_instruct.recipe.run import run_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"tiny", "tulu3_8b", "tulu3_70b", "tulu3_1_8b_grpo", "olmo2_7b", "olmo2_13b"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_dry_run(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    text = run_recipe(recipe, output=str(out), dry_run=True)
    assert "dry run" in text
    assert "per training process:" in text  # a memory estimate for every stage
    assert not out.exists(), "a dry run must not write anything"


def test_real_recipes_plan_their_hub_data_and_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    text = run_recipe(REPO / "recipes/tulu3_8b.yaml", output=str(tmp_path / "r"), dry_run=True)
    assert "939,343 rows (num_rows hint)" in text
    assert "effective 128 sequences = 1 per process x 8 process(es) on 1 node(s) x 16 accumulation" in text
    assert "2 epoch(s) x 7,338 steps/epoch = 14,676 optimizer steps" in text
    assert "weights 2.0 GB + gradients 2.0 GB + optimizer 12 GB" in text  # 8B under ZeRO-3 over 8
    assert "per vLLM engine GPU" in text


def test_recipe_values_follow_the_references(monkeypatch):
    monkeypatch.chdir(REPO)
    p = load_plan(REPO / "recipes/tulu3_8b.yaml", output="unused", scratch=Path("/tmp"))
    sft, dpo, rlvr = (s.cfg for s in p.stages)
    assert (
        sft.loss_reduction,
        sft.learning_rate,
        sft.total_batch_size,
        sft.num_train_epochs,
        sft.max_seq_length,
        sft.seed,
    ) == ("sum", 5e-6, 128, 2, 4096, 123)
    assert (dpo.loss_type, dpo.beta, dpo.learning_rate, dpo.warmup_ratio, dpo.max_seq_length) == (
        "dpo_norm",
        5.0,
        5e-7,
        0.1,
        2048,
    )
    assert (
        rlvr.algorithm,
        rlvr.verification_reward,
        rlvr.penalty_reward_value,
        rlvr.beta,
        rlvr.learning_rate,
        rlvr.value_model_name_or_path,
    ) == ("ppo", 10.0, -10.0, 0.05, 3e-7, "allenai/Llama-3.1-Tulu-3-8B-RM")
    p13 = load_plan(REPO / "recipes/olmo2_13b.yaml", output="unused", scratch=Path("/tmp"))
    rl = [s for s in p13.stages if s.type == "rlvr"]
    assert [Path(s.cfg.dataset_mix).name for s in rl] == [
        "rlvr_gsm_math_if.yaml",
        "rlvr_gsm.yaml",
        "rlvr_math.yaml",
    ]
    for s in rl:
        assert (s.cfg.learning_rate, s.cfg.beta, s.cfg.total_episodes, s.cfg.rollout_batch) == (
            4e-7,
            0.03,
            100000,
            512,
        )
    assert all(s.cfg.add_bos and s.cfg.chat_template == "tulu" for s in p13.stages)
    # each stage starts from the previous one's output
    assert [s.cfg.model_name_or_path for s in p13.stages[1:]] == [str(s.out) for s in p13.stages[:-1]]
