"""The one registry of stage types: what a recipe's `type: sft | dpo | rlvr` means everywhere (the CLI
subcommand, the config class, the function that runs it, its data, its rewards, the number its report
shows). Config classes and runners are named as `module:attr` and imported on use: they pull in torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _dpo_metric(ev: dict) -> str:
    pa = ev.get("preference_accuracy")
    return f"preference accuracy {_pct(pa.get('before'))} -> {_pct(pa.get('after'))}" if pa else ""


def _rlvr_metric(ev: dict) -> str:
    if "after" not in ev and "before" not in ev:
        return ""
    b = (ev.get("before") or {}).get("eval/reward_mean")
    a = (ev.get("after") or {}).get("eval/reward_mean")
    return f"mean verifiable reward {_pct(b)} -> {_pct(a)}"


@dataclass(frozen=True)
class StageType:
    name: str
    help: str
    kind: str  # the data kind of its `dataset_mix` (and `eval_dataset_mix`)
    config: str  # "module:ConfigClass"
    runner: str  # "module:run_fn", called with the config
    command: str  # "module:command_fn", the CLI handler
    # config fields holding further data mixes: field path -> (role in lineage/plans, data kind)
    extra_mixes: dict[str, tuple[str, str]] = field(default_factory=dict)
    reward_modules: Callable[[Any], list[str]] = lambda cfg: []  # noqa: E731 - user verifiers it loads
    metric: Callable[[dict], str] = lambda ev: ""  # noqa: E731 - its eval.json in one phrase

    def config_cls(self) -> type:
        return _load(self.config)

    def run(self, cfg) -> Any:
        return _load(self.runner)(cfg)

    def mix_fields(self) -> dict[str, tuple[str, str]]:
        """Every config field that names a data mix: field path -> (role, data kind)."""
        return {
            "dataset_mix": ("train", self.kind),
            "eval_dataset_mix": ("eval", self.kind),
            **self.extra_mixes,
        }


STAGE_TYPES: dict[str, StageType] = {
    "sft": StageType(
        name="sft",
        help="supervised fine-tuning",
        kind="sft",
        config="open_instruct.train.config:SFTConfig",
        runner="open_instruct.train.sft:run_sft",
        command="open_instruct.train.sft:sft_command",
    ),
    "dpo": StageType(
        name="dpo",
        help="direct preference optimisation",
        kind="preference",
        config="open_instruct.train.config:DPOConfig",
        runner="open_instruct.train.dpo:run_dpo",
        command="open_instruct.train.dpo:dpo_command",
        # on-policy pairs (generation/policy_pairs.py): their prompts are RLVR rows
        extra_mixes={
            "policy_pairs.prompts": ("pair_prompts", "rlvr"),
            "policy_pairs.eval_prompts": ("pair_eval_prompts", "rlvr"),
        },
        reward_modules=lambda cfg: list(cfg.policy_pairs.reward_modules),
        metric=_dpo_metric,
    ),
    "rlvr": StageType(
        name="rlvr",
        help="RL with verifiable rewards (PPO or GRPO)",
        kind="rlvr",
        config="open_instruct.rl.config:RLVRConfig",
        runner="open_instruct.rl.rlvr:run_rlvr",
        command="open_instruct.rl.rlvr:rlvr_command",
        reward_modules=lambda cfg: list(cfg.reward_modules),
        metric=_rlvr_metric,
    ),
}


def stage_type(name: str) -> StageType:
    return STAGE_TYPES[name]


def stage_classes() -> dict[str, type]:
    """Stage type -> config dataclass."""
    return {name: st.config_cls() for name, st in STAGE_TYPES.items()}
