"""Errors reward_fns raises for bad user input.

They are plain ``ValueError`` subclasses with one-line messages: ``reward_fns`` does not import
``open_instruct`` (so it stays a light, standalone package), and the ``open-instruct`` CLI prints any
``ValueError`` raised from a ``reward_fns`` module as a single ``error: ...`` line.
"""


class RewardError(ValueError):
    """Base class: a problem with a reward name, spec, label or input file."""


class UnknownRewardError(RewardError):
    """No reward is registered under the requested name, or a user reward spec cannot be loaded."""


class RewardInputError(RewardError):
    """A malformed input file, line or argument (CLI) or mismatched batch lengths (runner)."""
