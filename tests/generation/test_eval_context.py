"""Prompt budgets that fit the model's context (`open-instruct eval`, DPO policy_pairs): a short-context
model gets its prompts capped instead of an engine error; impossible settings are one-line errors."""

import pytest

from open_instruct.errors import ConfigError
from open_instruct.generation.evaluate import fit_context


def test_prompt_budget_is_capped_to_the_context(tiny_model_dir):
    # the tiny model has 512 positions
    assert fit_context(str(tiny_model_dir), 64, 32) == 64
    assert fit_context(str(tiny_model_dir), 2048, 256) == 512 - 256


def test_no_room_for_a_prompt_names_the_field(tiny_model_dir):
    with pytest.raises(ConfigError) as info:
        fit_context(str(tiny_model_dir), 64, 600, "policy_pairs (model)", "policy_pairs.max_tokens")
    msg = str(info.value)
    assert (
        msg.startswith("policy_pairs.max_tokens: 600 leaves no room")
        and "512-token" in msg
        and "\n" not in msg
    )


def test_missing_model_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^eval --model: .*nope is neither a local model dir nor a hub id"):
        fit_context(str(tmp_path / "nope"), 64, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^eval --model: cannot read"):
        fit_context(str(tmp_path / "empty"), 64, 32)
