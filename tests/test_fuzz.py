"""Property-based fuzzing of the inputs users hand us: data rows, configs and reward labels.
Random malformed input always gives a one-line UserError or a counted drop, never a traceback
from deep inside the library."""

import json
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from open_instruct.config import from_dict
from open_instruct.errors import UserError
from open_instruct.train.sft import SFTConfig

# `make test` is the gate CI lands on, so it draws the same examples every run; a wider random
# search: HYPOTHESIS_PROFILE=explore make test PYTEST_ARGS=tests/test_fuzz.py
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
roles = st.sampled_from(["user", "assistant", "system", "bot", "", None, 3])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": json_values}), max_size=4)
rows = st.one_of(
    st.fixed_dictionaries({"messages": st.one_of(messages, json_values)}),
    st.fixed_dictionaries({"chosen": messages, "rejected": messages}),
    st.dictionaries(
        st.sampled_from(["messages", "chosen", "rejected", "prompt", "ground_truth", "dataset", "other"]),
        json_values,
        max_size=4,
    ),
    json_values,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.lists(rows, min_size=1, max_size=4),
    kind=st.sampled_from(["sft", "preference", "rlvr"]),
    garbage=st.booleans(),
)
def test_random_rows_give_a_one_line_error_or_load(tmp_path_factory, batch, kind, garbage):
    from open_instruct.data.mixes import load_mix

    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    lines = [json.dumps(r) for r in batch]
    if garbage:
        lines.insert(len(lines) // 2, "{not json")
    path.write_text("\n".join(lines) + "\n")
    try:
        mix = load_mix(str(path), kind=kind)
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and str(path.name) in msg, msg
    else:
        assert len(mix.dataset) + mix.num_dropped == len(batch)


config_keys = st.sampled_from(
    [
        "learning_rate",
        "per_device_train_batch_size",
        "loss_reduction",
        "packing",
        "total_batch_size",
        "warmup_ratio",
        "chat_template",
        "deepspeed",
        "seed",
        "learning_rat",
        "",
        "max_seq_length",
        "num_train_epochs",
    ]
)


@settings(max_examples=150, deadline=None)
@given(cfg=st.dictionaries(config_keys, json_values, max_size=5))
def test_random_configs_give_a_one_line_error_or_a_config(cfg):
    base = {"model_name_or_path": "m", "dataset_mix": "d.yaml", "output_dir": "o"}
    try:
        loaded = from_dict(SFTConfig, {**base, **cfg}, "sft.yaml")
    except UserError as e:
        assert "\n" not in str(e) and str(e).startswith("sft.yaml"), str(e)
    else:
        assert isinstance(loaded.learning_rate, float)


@settings(max_examples=80, deadline=None)
@given(
    label=json_values,
    completion=st.text(alphabet=string.printable + "äπ∑", max_size=200),
    name=st.sampled_from(["gsm8k", "math", "strict_math", "ifeval", "string_match", "f1", "max_length"]),
)
def test_random_reward_labels_score_in_range(label, completion, name):
    from reward_fns import RewardRunner

    with RewardRunner(timeout_s=5) as runner:
        out = runner.score([completion], [label if isinstance(label, str) else json.dumps(label)], [name])
    assert 0.0 <= out.scores[0] <= 1.0


@pytest.mark.parametrize("override", ["a.b.c", "=3", "learning_rate"])
def test_malformed_set_overrides_are_one_line_errors(override):
    from open_instruct.config import apply_overrides

    with pytest.raises(UserError) as e:
        apply_overrides({}, [override])
        from_dict(
            SFTConfig,
            apply_overrides({"model_name_or_path": "m", "dataset_mix": "d", "output_dir": "o"}, [override]),
            "cli",
        )
    assert "\n" not in str(e.value)
