"""open_instruct: SFT -> DPO -> RLVR post-training, the Tülu 3 way."""

__version__ = "0.1.0"
