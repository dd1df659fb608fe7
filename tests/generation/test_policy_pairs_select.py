"""Choosing (right, wrong) answer pairs from one prompt's samples (data/policy_pairs.py)."""

import random

import pytest

from open_instruct.config import from_dict
from open_instruct.errors import ConfigError
from open_instruct.generation.policy_pairs import PolicyPairsConfig, select_pairs
from open_instruct.train.config import DPOConfig


def test_pairs_a_right_with_a_wrong_answer_skipping_blanks_and_duplicates():
    answers = ["The answer is 5.", "  ", "The answer is 4.", "The answer is 5.", "The answer is 6.", "Five."]
    scores = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    pairs = select_pairs(answers, scores, pairs_per_prompt=5, rng=random.Random(0))
    # right: "The answer is 5." (once: the duplicate is dropped), "Five."; wrong: 4, 6 (the blank is dropped)
    assert len(pairs) == 2
    assert {p[0] for p in pairs} == {"The answer is 5.", "Five."}
    assert {p[1] for p in pairs} <= {"The answer is 4.", "The answer is 6."}
    assert len({p[1] for p in pairs}) == 2  # no answer used twice


def test_no_pair_when_all_right_or_all_wrong_and_cap_per_prompt():
    rng = random.Random(0)
    assert select_pairs(["a", "b"], [1.0, 1.0], 1, rng) == []
    assert select_pairs(["a", "b"], [0.0, 0.2], 1, rng) == []
    pairs = select_pairs(["a", "b", "c", "d"], [1.0, 1.0, 0.0, 0.0], 1, rng)
    assert len(pairs) == 1 and pairs[0][0] in "ab" and pairs[0][1] in "cd"
    # the threshold is 0.5: partial credit at 0.5 counts as right
    assert select_pairs(["half", "none"], [0.5, 0.49], 1, rng) == [("half", "none")]


def test_selection_is_deterministic_for_a_seeded_rng():
    answers = [f"answer {i}" for i in range(8)]
    scores = [float(i % 2) for i in range(8)]
    a = select_pairs(answers, scores, 3, random.Random("0/train/7"))
    b = select_pairs(answers, scores, 3, random.Random("0/train/7"))
    assert a == b and len(a) == 3


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"samples": 1}, "policy_pairs.samples"),
        ({"temperature": 0.0}, "policy_pairs.temperature"),
        ({"pairs_per_prompt": 0}, "policy_pairs.pairs_per_prompt"),
        ({"eval_prompts": "x.yaml", "prompts": None}, "policy_pairs.eval_prompts"),
        ({"samles": 4}, "unknown key 'samles'"),
    ],
)
def test_bad_policy_pairs_settings_are_one_line_errors(bad, field):
    data = {"model_name_or_path": "m", "output_dir": "o", "policy_pairs": {"prompts": "p.yaml", **bad}}
    with pytest.raises(ConfigError) as info:
        from_dict(DPOConfig, data, "dpo")
    assert field in str(info.value) and "\n" not in str(info.value)


def test_policy_pairs_replace_the_fixed_pair_files():
    ok = from_dict(
        DPOConfig, {"model_name_or_path": "m", "output_dir": "o", "policy_pairs": {"prompts": "p.yaml"}}
    )
    assert ok.generates_data and not ok.dataset_mix
    with pytest.raises(ConfigError, match=r"dpo.dataset_mix: policy_pairs.prompts makes the training pairs"):
        from_dict(
            DPOConfig,
            {
                "model_name_or_path": "m",
                "output_dir": "o",
                "dataset_mix": "d.jsonl",
                "policy_pairs": {"prompts": "p"},
            },
            "dpo",
        )
    with pytest.raises(ConfigError, match="missing required key 'dataset_mix'"):
        from_dict(DPOConfig, {"model_name_or_path": "m", "output_dir": "o"}, "dpo")
    assert PolicyPairsConfig().enabled is False
