"""Fixtures for reward tests: registry isolation and a user reward file with misbehaving rewards."""

from __future__ import annotations

import contextlib
import sys
import textwrap

import pytest

from reward_fns import registry, user_rewards

# Rewards a user might write, misbehaving on purpose. Each misbehaves only on a marked completion so a
# batch mixes good and bad samples.
USER_REWARDS = textwrap.dedent('''
    import os
    import time

    from reward_fns import RewardResult, register


    def exact_answer(completion, ground_truth):
        """1 when the completion is exactly the label."""
        return float(completion.strip() == str(ground_truth).strip())


    def raising(completion, ground_truth):
        if "boom" in completion:
            raise RuntimeError("kaboom")
        return 1.0


    def hanging(completion, ground_truth):
        if "hang" in completion:
            while True:
                pass
        return 1.0


    def sleepy(completion, ground_truth):
        if "sleep" in completion:
            time.sleep(3600)
        return 1.0


    def memory_hog(completion, ground_truth):
        if "hog" in completion:
            blob = bytearray(10 * 1024 ** 3)
            return float(len(blob) > 0)
        return 1.0


    def dying(completion, ground_truth):
        if "die" in completion:
            os._exit(3)
        return 1.0


    def junk(completion, ground_truth):
        return {"str": "1.0", "nan": float("nan"), "inf": float("inf"), "list": [1.0], "none": None}.get(
            completion, 0.25)


    def with_metadata(completion, ground_truth, prompt=None, token_ids=None):
        return RewardResult(0.5, {"prompt": prompt, "n_tokens": None if token_ids is None else len(token_ids)})


    def trl_style(completions, prompts=None, ground_truth=None, **kwargs):
        """A TRL GRPOTrainer reward function, unchanged."""
        return [None if c == "skip" else float(c == g) for c, g in zip(completions, ground_truth)]


    def trl_hanging(completions, **kwargs):
        if any(c == "hang" for c in completions):
            while True:
                pass
        return [1.0] * len(completions)


    def trl_wrong_length(completions, **kwargs):
        return [1.0]


    class LengthPenalty:
        def __call__(self, completion, ground_truth):
            return -len(completion) / 100


    @register("decorated_reward", description="registered by the user's file itself")
    def decorated(completion, ground_truth, prompt=None):
        return float(prompt == "secret prompt")
''')


@contextlib.contextmanager
def registry_snapshot():
    """Undo registrations and forget user modules imported inside the block (so the next test that
    loads the same file imports it afresh and its @register decorators run again)."""
    saved = dict(registry._REGISTRY)
    saved_by_module = dict(user_rewards._REGISTERED_BY_MODULE)
    saved_modules = {k for k in sys.modules if k.startswith("reward_fns._user")}
    try:
        yield
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
        user_rewards._REGISTERED_BY_MODULE.clear()
        user_rewards._REGISTERED_BY_MODULE.update(saved_by_module)
        for key in [k for k in sys.modules if k.startswith("reward_fns._user") and k not in saved_modules]:
            del sys.modules[key]


@pytest.fixture(scope="session")
def snapshot_registry():
    """The registry_snapshot context manager, for module-scoped fixtures."""
    return registry_snapshot


@pytest.fixture
def clean_registry():
    """Undo any registrations a test makes."""
    with registry_snapshot():
        yield


@pytest.fixture(scope="session")
def user_reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user_rewards") / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path
