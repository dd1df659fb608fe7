import sys
import textwrap

import pytest

from reward_fns import (
    RewardResult,
    UnknownRewardError,
    get_reward,
    get_spec,
    list_rewards,
    load_user_rewards,
    register,
)
from reward_fns.registry import describe_signature

BUILTINS = {
    "gsm8k",
    "math",
    "strict_math",
    "ifeval",
    "ifeval_loose",
    "string_match",
    "f1",
    "code",
    "max_length",
}


def test_builtins_registered_with_descriptions():
    listed = dict(list_rewards())
    assert BUILTINS <= set(listed)
    assert all(listed[name] for name in BUILTINS)


def test_lookup_is_case_insensitive():
    assert get_reward("MATH") is get_reward("math")
    assert get_spec(" GSM8K ").name == "gsm8k"


def test_unknown_reward_error_is_one_line_and_lists_names():
    with pytest.raises(UnknownRewardError) as err:
        get_reward("nope")
    message = str(err.value)
    assert "\n" not in message
    assert "'nope'" in message and "gsm8k" in message and "math" in message
    assert isinstance(err.value, ValueError)


def test_register_decorator_function_and_class(clean_registry):
    @register("My_Reward", description="desc here")
    def mine(completion, ground_truth):
        return 1.0

    @register("class_reward")
    class Scorer:
        """Scores by length."""

        def __call__(self, completion, ground_truth, prompt=None):
            return RewardResult(len(completion), {"prompt": prompt})

    assert get_reward("my_reward") is mine
    assert ("my_reward", "desc here") in list_rewards()
    assert dict(list_rewards())["class_reward"] == "Scores by length."
    assert get_spec("class_reward").call_one("abc", None, "p").metadata == {"prompt": "p"}


def test_only_accepted_keywords_are_passed(clean_registry):
    @register("two_args")
    def two(completion, ground_truth):
        return 1.0

    @register("with_kwargs")
    def many(completion, ground_truth, **kwargs):
        return float(kwargs["prompt"] == "p" and kwargs["token_ids"] == [1])

    assert get_spec("two_args").call_one("a", "b", "p", [1]) == 1.0
    assert get_spec("with_kwargs").call_one("a", "b", "p", [1]) == 1.0


def test_trl_batch_signature_detection():
    def trl(completions, **kwargs):
        return []

    def trl_named(prompts, completions, ground_truth, completion_ids):
        return []

    def per_sample(completion, ground_truth, prompt=None):
        return 0.0

    assert describe_signature(trl) == (
        True,
        frozenset({"prompts", "ground_truth", "dataset", "completion_ids"}),
    )
    assert describe_signature(trl_named)[0] is True
    assert describe_signature(per_sample) == (False, frozenset({"prompt"}))
    with pytest.raises(TypeError):
        describe_signature(lambda completion: 0.0)


def test_load_user_rewards_from_file(clean_registry, user_reward_file):
    assert load_user_rewards(f"{user_reward_file}:exact_answer") == ["decorated_reward", "exact_answer"]
    assert get_reward("exact_answer")("42", "42") == 1.0
    assert get_spec("exact_answer").origin == f"{user_reward_file}:exact_answer"
    assert load_user_rewards(f"{user_reward_file}:exact_answer", name="renamed") == [
        "decorated_reward",
        "renamed",
    ]
    assert load_user_rewards(str(user_reward_file)) == ["decorated_reward"]
    load_user_rewards(f"{user_reward_file}:trl_style")
    assert get_spec("trl_style").batched
    load_user_rewards(f"{user_reward_file}:LengthPenalty")
    assert get_reward("lengthpenalty")("abcd", None) == -0.04


def test_load_user_rewards_from_module(clean_registry, tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text("def score(completion, ground_truth):\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_user_rewards("mypkg.rewards:score") == ["score"]
    assert get_spec("score").origin == "mypkg.rewards:score"
    sys.modules.pop("mypkg.rewards", None)
    sys.modules.pop("mypkg", None)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("does/not/exist.py:fn", "not found"),
        ("no_such_module_xyz:fn", "not found"),
        ("{file}:missing_fn", "has no attribute 'missing_fn'"),
        ("{file}:", "not a Python name"),
        (":fn", "no file or module"),
    ],
)
def test_bad_specs_give_one_line_errors(spec, match, user_reward_file, clean_registry):
    with pytest.raises(ValueError, match=match) as err:
        load_user_rewards(spec.format(file=user_reward_file))
    assert "\n" not in str(err.value)


def test_module_that_fails_to_import(tmp_path, clean_registry):
    bad = tmp_path / "broken.py"
    bad.write_text(
        textwrap.dedent("""
        import nonexistent_dependency_xyz
        def fn(completion, ground_truth):
            return 1.0
    """)
    )
    with pytest.raises(ValueError, match="failed to import: ModuleNotFoundError") as err:
        load_user_rewards(f"{bad}:fn")
    assert "\n" not in str(err.value)


def test_module_without_registrations_needs_a_function(tmp_path, clean_registry):
    plain = tmp_path / "plain.py"
    plain.write_text("def fn(completion, ground_truth):\n    return 1.0\n")
    with pytest.raises(UnknownRewardError, match="registered no rewards"):
        load_user_rewards(str(plain))


def test_import_is_light():
    import subprocess

    code = (
        "import sys, time; t = time.perf_counter(); import reward_fns; dt = time.perf_counter() - t; "
        "heavy = [m for m in ('torch', 'sympy', 'math_verify', 'langdetect', 'numpy') if m in sys.modules]; "
        "print(heavy, dt)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, seconds = out.rsplit(" ", 1)
    assert heavy == "[]"
    assert float(seconds) < 1.0
