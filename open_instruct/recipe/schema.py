"""A recipe's schema (the YAML's top level, checked strictly like every config) and the resolved plan
that `load.py` makes of it: one `StagePlan` per stage with its config, parent, output dir and data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..generation.evaluate import EvalSpec
from ..model.hub import HubTarget


@dataclass
class TinyBase:
    """`base_model: {tiny: {...}}`: build_tiny's arguments (model/tiny.py)."""

    arch: Literal["llama", "olmo2"] = "llama"
    seed: int = 0
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 512
    vocab_size: int = 512

    def validate(self, where: str) -> None:
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError(
                f"{where}: hidden {self.hidden} must divide by heads {self.heads}, "
                f"and heads by kv_heads {self.kv_heads}"
            )


@dataclass
class Launch:
    """How stages are launched: `num_processes` in total over `nodes` machines (torchrun; the same
    command on every node, NODE_RANK and MASTER_ADDR set). SFT/DPO stages use it unless they set their
    own; an RLVR stage sets its learner's `num_processes` / `nodes` itself (its GPUs are shared with the
    vLLM engines, which scale with `rollout.num_engines`)."""

    num_processes: int = 1
    nodes: int = 1
    master_port: int = 29500
    gpu_memory_gb: float | None = None  # the dry run flags stages whose estimate exceeds this per GPU

    def validate(self, where: str) -> None:
        if self.num_processes < 1 or self.nodes < 1:
            raise ConfigError(f"{where}: num_processes and nodes must be >= 1")
        if self.num_processes % self.nodes:
            raise ConfigError(
                f"{where}.num_processes: {self.num_processes} processes do not split evenly "
                f"over {self.nodes} nodes"
            )


@dataclass
class Recipe:
    name: str
    stages: list[dict]
    base_model: Any = None  # hub id / local dir, or {tiny: {...}}
    output_dir: str = ""
    description: str = ""
    defaults: dict = field(default_factory=dict)  # merged into every stage that has the key
    eval: EvalSpec | None = None
    launch: Launch = field(default_factory=Launch)
    push_to_hub: HubTarget | None = None  # {repo_id, private, revision}: push the final model after the run

    def validate(self, where: str) -> None:
        if not self.stages:
            raise ConfigError(f"{where}.stages: a recipe needs at least one stage")
        if self.base_model in (None, ""):
            raise ConfigError(f"{where}: missing required key 'base_model'")


RECIPE_KEYS = {f.name for f in dataclasses.fields(Recipe)}


@dataclass
class StagePlan:
    index: int
    name: str
    type: str
    cfg: Any  # the stage type's config (SFTConfig | DPOConfig | RLVRConfig), fully resolved
    parent: str  # "base" or the previous stage's name
    out: Path
    num_processes: int
    nodes: int
    mixes: dict[str, str]  # role ("train", "eval") -> mix path
    rows: dict[str, int | None] = field(default_factory=dict)  # role -> rows (planning; None: unknown)
    amounts: dict[str, list] = field(default_factory=dict)  # role -> per-source amounts (data.validate)
    reward_names: list[str] = field(default_factory=list)  # from local RLVR data (validated)
    status: str = "pending"  # pending | done | resume | adopt (finished model without lineage)
    note: str = ""

    @property
    def where(self) -> str:
        return f"stage {self.name}"


@dataclass
class Plan:
    recipe: Recipe
    recipe_path: Path
    overrides: list[str]
    output: Path
    base: str  # the base model: hub id or local dir (for tiny: <output>/base, built before stage 1)
    tiny: TinyBase | None
    stages: list[StagePlan]
    eval_mix: str | None
    eval: EvalSpec | None
    raw: dict  # the recipe after overrides (written to <output>/recipe.yaml)
    eval_label: str = ""  # how the eval mix is named in plans and reports

    @property
    def where(self) -> str:
        return str(self.recipe_path)
