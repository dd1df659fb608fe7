"""Instruction-following verifiers: IFEval's 25 instruction ids and the Tülu 3 IF functions."""

from .instructions import INSTRUCTIONS
from .reward import ifeval_loose_reward, ifeval_reward
from .tulu_functions import FUNCTIONS

__all__ = ["FUNCTIONS", "INSTRUCTIONS", "ifeval_loose_reward", "ifeval_reward"]
