"""Verifiable rewards: a registry of reward functions, the built-ins, users' own rewards, and a runner
that contains failures (errors, hangs, junk, memory) so they cost one sample's score, never the run.

    from reward_fns import RewardRunner, register, get_reward, list_rewards, load_user_rewards

    @register("exact_answer", description="...")
    def exact_answer(completion, ground_truth, prompt=None, token_ids=None) -> float: ...

    with RewardRunner(timeout_s=10, extra_modules=["my_rewards.py:exact_answer"]) as runner:
        batch = runner.score(completions, ground_truths, datasets)   # datasets pick the verifier per row
        batch.scores, batch.metrics()

    label_problem("gsm8k", {"answer": 5})   # -> "expected a number, got a dict" (None: usable)

Importing this package is quick and does not import torch, sympy/math-verify or langdetect (those
load on first use). See docs/rewards.md.
"""

from . import code_reward, gsm8k, ifeval, math_reward, max_length, text_match  # noqa: F401  (register built-ins)
from .errors import RewardError, RewardInputError, UnknownRewardError
from .outcome import Outcome
from .registry import RewardResult, RewardSpec, get_reward, get_spec, label_problem, list_rewards, register
from .runner import RewardRunner
from .stats import ScoreBatch, VerifierStats
from .user_rewards import load_user_rewards

__all__ = [
    "Outcome",
    "RewardError",
    "RewardInputError",
    "RewardResult",
    "RewardRunner",
    "RewardSpec",
    "ScoreBatch",
    "UnknownRewardError",
    "VerifierStats",
    "get_reward",
    "get_spec",
    "label_problem",
    "list_rewards",
    "load_user_rewards",
    "register",
]
