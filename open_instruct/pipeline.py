"""Recipes: one YAML that chains SFT -> DPO -> RLVR stages, run with one command.

    open-instruct run recipes/tiny.yaml [--set sft.learning_rate=1e-3 ...] [--dry-run] [--output DIR]

What `run` does, top to bottom (`run_recipe`):
1. load the recipe, apply `--set` overrides, and validate ALL of it before anything heavy starts:
   every stage's config through its strict dataclass (unknown keys, wrong types, batch arithmetic),
   every data mix (files exist, the first rows have the right columns for the stage's kind), the
   reward names that local RLVR data asks for, user reward modules, the launch layout;
   then the state of the output dir (finished stages must match the recipe, see "skip" below).
   Any problem is ONE line, `error: <recipe> stage <name>: ...`, raised before training;
2. `--dry-run`: print the plan (data amounts, steps, batch split, memory per process) and stop;
3. build the base model when it is a `tiny:` spec; evaluate it on the held-out set (`eval:`);
4. for each stage: skip it when finished and verified, else train it (a stage resumes from its own
   checkpoints when interrupted), write lineage.json, evaluate on the held-out set;
5. print a summary table and write `<output>/report.md` (plots + eval numbers per stage).

Skip / resume. A stage is skipped when its output dir holds a published model whose manifest digest
verifies AND its lineage.json records the same resolved config, the same parent digest (the previous
stage's model, or the base model) and the same data fingerprints. A finished stage that does not
match is an error -- never silently reused or overwritten: choose another --output or delete the
stage dir (and the ones after it). An unfinished stage (lineage status "running", checkpoints) is
handed back to its stage function, which resumes from its newest intact checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import lineage as lin
from . import plan as planmod
from .config import from_dict, load_yaml, parse_override, relative_to_run, to_dict
from .errors import ConfigError, DataError, UserError

log = logging.getLogger(__name__)

# Keys of a stage entry that belong to the pipeline, not to the stage's config dataclass.
PIPELINE_STAGE_KEYS = ("name", "type", "num_processes", "nodes")
# Set by the pipeline; a recipe that sets them would break the chaining.
CHAINED_KEYS = ("model_name_or_path", "output_dir")
# Config keys that do not change what a stage trains: a rerun that differs only in these still skips.
NON_SEMANTIC_KEYS = {
    "logging_steps",
    "checkpointing_steps",
    "keep_last_checkpoints",
    "wandb_project",
    "wandb_run_name",
    "preprocessing_num_workers",
    "reward_workers",
}
STAGE_KIND = {"sft": "sft", "dpo": "preference", "rlvr": "rlvr"}


def stage_classes() -> dict[str, type]:
    """Stage type -> config dataclass (imported lazily: they pull in torch)."""
    from .rl.rlvr import RLVRConfig
    from .train.dpo import DPOConfig
    from .train.sft import SFTConfig

    return {"sft": SFTConfig, "dpo": DPOConfig, "rlvr": RLVRConfig}


def stage_runner(stage_type: str):
    if stage_type == "sft":
        from .train.sft import run_sft

        return run_sft
    if stage_type == "dpo":
        from .train.dpo import run_dpo

        return run_dpo
    from .rl.rlvr import run_rlvr

    return run_rlvr


# ----------------------------------------------------------------------------- recipe schema


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
class EvalSpec:
    """Held-out evaluation after every stage (and of the base model): vLLM generation scored by
    reward_fns on an RLVR-format mix (open_instruct/evaluate.py)."""

    dataset_mix: Any = ""  # a mix YAML / data file path, or an inline mix mapping
    max_tokens: int = 256
    limit: int | None = None  # first N prompts
    samples: int = 1
    temperature: float | None = None  # default: 0 (greedy) for 1 sample, 1.0 otherwise
    seed: int = 0
    max_prompt_length: int = 2048
    reward_modules: list[str] = field(default_factory=list)
    rollout: dict = field(default_factory=dict)  # RolloutConfig fields (device, multiprocess_engine, ...)
    base: bool = True  # also evaluate the base model: the row every stage improves on

    def validate(self, where: str) -> None:
        if not self.dataset_mix:
            raise ConfigError(f"{where}: missing required key 'dataset_mix'")
        if self.samples < 1 or self.max_tokens < 1:
            raise ConfigError(f"{where}: samples and max_tokens must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{where}.limit: must be >= 1 or null")

    @property
    def resolved_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.samples == 1 else 1.0


@dataclass
class Launch:
    """How SFT/DPO stages are launched: `num_processes` in total over `nodes` machines (torchrun).
    RLVR's learner is one process; its generation scales with `rollout.num_engines`."""

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

    def validate(self, where: str) -> None:
        if not self.stages:
            raise ConfigError(f"{where}.stages: a recipe needs at least one stage")
        if self.base_model in (None, ""):
            raise ConfigError(f"{where}: missing required key 'base_model'")


RECIPE_KEYS = {f.name for f in dataclasses.fields(Recipe)}


# ----------------------------------------------------------------------------- the plan


@dataclass
class StagePlan:
    index: int
    name: str
    type: str
    cfg: Any  # SFTConfig | DPOConfig | RLVRConfig, fully resolved
    parent: str  # "base" or the previous stage's name
    out: Path
    num_processes: int
    nodes: int
    mixes: dict[str, str]  # role ("train", "eval") -> mix path
    rows: dict[str, int | None] = field(default_factory=dict)  # role -> rows (planning; None: unknown)
    amounts: dict[str, list] = field(default_factory=dict)  # role -> [plan.SourceAmount]
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


# ----------------------------------------------------------------------------- loading


def _recipe_dir(path: Path) -> Path:
    return path.parent


def resolve_path(value: str, recipe_dir: Path, where: str, what: str = "data file") -> str:
    """Relative paths resolve against the current directory first, then the recipe's directory."""
    p = Path(value).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise DataError(f"{where}: {what} not found: {value}")
        return str(p)
    if p.exists():
        return str(p)
    alt = recipe_dir / p
    if alt.exists():
        return str(alt)
    raise DataError(f"{where}: {what} not found: {value} (looked in the current directory and {recipe_dir})")


def _resolve_mix(value, dest: Path, recipe_dir: Path, where: str):
    """A stage's data-mix value: an inline mix (dict) is written to `dest`, a path is resolved (cwd
    first, then the recipe dir); anything else is left for the config's type check to name."""
    if isinstance(value, dict):
        return _materialise_inline_mix(value, dest, recipe_dir, where)
    if isinstance(value, str):
        return resolve_path(value, recipe_dir, where)
    return value


def _materialise_inline_mix(mix: dict, dest: Path, recipe_dir: Path, where: str) -> str:
    """An inline `dataset_mix: {sources: [...]}` is written to `dest` (local `path:` sources resolved
    like every data path, then made relative to `dest`) so that every stage reads a mix file."""
    mix = copy.deepcopy(mix)
    for i, src in enumerate(mix.get("sources") or []):
        if isinstance(src, dict) and src.get("path"):
            found = Path(resolve_path(str(src["path"]), recipe_dir, f"{where}.sources[{i}].path"))
            src["path"] = os.path.relpath(found.resolve(), dest.parent.resolve())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(mix, sort_keys=False))
    return str(dest)


def _stage_override(stages: list[dict], name: str, keys: list[str], value: Any) -> None:
    for st in stages:
        if st.get("name") == name:
            node = st
            for k in keys[:-1]:
                if not isinstance(node.get(k), dict):
                    node[k] = {}
                node = node[k]
            node[keys[-1]] = value


def apply_recipe_overrides(data: dict, overrides: list[str], where: str) -> dict:
    """`--set` for recipes: `STAGE.key=v` (a stage by name), `*.key=v` (every stage whose config has
    the key), `eval.limit=20` / `base_model=...` / `launch.num_processes=8` (recipe keys)."""
    out = copy.deepcopy(data)
    stages = out.get("stages")
    names = (
        [s.get("name") for s in stages]
        if isinstance(stages, list) and all(isinstance(s, dict) for s in stages)
        else []
    )
    for item in overrides or []:
        keys, value = parse_override(item)
        head = keys[0]
        if head == "*" and len(keys) > 1:
            classes = stage_classes()
            hit = False
            for st in stages or []:
                cls = classes.get(st.get("type"))
                fields = {f.name for f in dataclasses.fields(cls)} if cls else set()
                if keys[1] in fields or keys[1] in PIPELINE_STAGE_KEYS:
                    _stage_override([st], st.get("name"), keys[1:], value)
                    hit = True
            if not hit:
                raise ConfigError(f"--set {item}: no stage has a key '{keys[1]}'")
        elif head in names and head not in RECIPE_KEYS:
            if len(keys) < 2:
                raise ConfigError(f"--set {item}: name a key of stage {head}, e.g. {head}.learning_rate=...")
            _stage_override(stages, head, keys[1:], value)
        elif head in RECIPE_KEYS:
            node = out
            for k in keys[:-1]:
                if not isinstance(node.get(k), dict):
                    node[k] = {}
                node = node[k]
            node[keys[-1]] = value
        else:
            close = difflib.get_close_matches(head, names + sorted(RECIPE_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"--set {item}: '{head}' is neither a stage ({', '.join(map(str, names))}) "
                f"nor a recipe key{hint}"
            )
    return out


def _check_stage_entries(stages: Any, where: str) -> None:
    if not isinstance(stages, list):
        raise ConfigError(f"{where}.stages: expected a list of stages")
    seen = set()
    for i, st in enumerate(stages):
        w = f"{where} stages[{i}]"
        if not isinstance(st, dict):
            raise ConfigError(f"{w}: expected a mapping with name, type and the stage's keys")
        name, typ = st.get("name"), st.get("type")
        if not name or not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise ConfigError(
                f"{w}.name: a stage needs a name made of letters, digits, '_', '-', '.' (got {name!r})"
            )
        if name in RECIPE_KEYS or name in ("base", "mixes", "report"):
            raise ConfigError(f"{w}.name: '{name}' is reserved; choose another stage name")
        if name in seen:
            raise ConfigError(f"{w}.name: stage name '{name}' is used twice")
        seen.add(name)
        if typ not in STAGE_KIND:
            raise ConfigError(f"{where} stage {name}.type: {typ!r} is not one of sft, dpo, rlvr")


def _looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value)) and not value.startswith(".")


def load_plan(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    output: str | None = None,
    scratch: Path | None = None,
) -> Plan:
    """Loads and validates the whole recipe (nothing heavy, nothing written except inline mixes into
    `scratch` or the output dir). Raises a one-line UserError on the first problem."""
    recipe_path = Path(recipe_path)
    raw = load_yaml(recipe_path)
    where = str(recipe_path)
    if "stages" in raw:
        _check_stage_entries(raw["stages"], where)
    raw = apply_recipe_overrides(raw, overrides or [], where)
    if "stages" in raw:
        _check_stage_entries(raw["stages"], where)
    recipe = from_dict(Recipe, raw, where)
    recipe_dir = _recipe_dir(recipe_path)
    out_str = output or recipe.output_dir
    if not out_str:
        raise ConfigError(f"{where}: no output_dir in the recipe; pass --output DIR")
    output_dir = Path(out_str)
    mix_dir = scratch if scratch is not None else output_dir / "mixes"

    # base model
    tiny = None
    if isinstance(recipe.base_model, dict):
        if set(recipe.base_model) != {"tiny"}:
            raise ConfigError(
                f"{where}.base_model: a mapping must be {{tiny: {{...}}}} (got keys "
                f"{', '.join(map(str, recipe.base_model))})"
            )
        tiny = from_dict(TinyBase, recipe.base_model["tiny"] or {}, f"{where}.base_model.tiny")
        base = str(output_dir / "base")
    elif isinstance(recipe.base_model, str):
        base = recipe.base_model
        p = Path(base).expanduser()
        local = p if p.exists() else (recipe_dir / p if (recipe_dir / p).exists() else None)
        if local is not None:
            if not (local / "config.json").is_file():
                raise ConfigError(
                    f"{where}.base_model: {base} has no config.json (not a Hugging Face model dir)"
                )
            base = str(local)
        elif not _looks_like_hub_id(base):
            raise ConfigError(
                f"{where}.base_model: {base} is neither a local model dir nor a hub id (org/name)"
            )
    else:
        raise ConfigError(f"{where}.base_model: expected a hub id, a local dir or {{tiny: {{...}}}}")

    # held-out eval
    ev = recipe.eval
    eval_mix = None
    eval_label = ""
    if ev is not None:
        ew = f"{where} eval"
        if isinstance(ev.dataset_mix, dict):
            eval_mix = _materialise_inline_mix(
                ev.dataset_mix, mix_dir / "eval.yaml", recipe_dir, f"{ew}.dataset_mix"
            )
            eval_label = "inline mix: " + ", ".join(
                str(src.get("hf") or src.get("path")) + (f" [{src['split']}]" if src.get("split") else "")
                for src in ev.dataset_mix.get("sources") or []
                if isinstance(src, dict)
            )
        elif isinstance(ev.dataset_mix, str):
            eval_mix = resolve_path(ev.dataset_mix, recipe_dir, f"{ew}.dataset_mix")
            eval_label = eval_mix
        else:
            raise ConfigError(f"{ew}.dataset_mix: expected a path or an inline mix mapping")
        from .rl.rollout import RolloutConfig

        from_dict(RolloutConfig, {"model": "x", **ev.rollout}, f"{ew}.rollout")
        ev.reward_modules = [
            _resolve_reward_spec(s, recipe_dir, f"{ew}.reward_modules[{i}]")
            for i, s in enumerate(ev.reward_modules)
        ]

    classes = stage_classes()
    known = set().union(*({f.name for f in dataclasses.fields(classes[st["type"]])} for st in recipe.stages))
    for key in recipe.defaults:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}.defaults: no stage of this recipe has a key '{key}'{hint}")
        if key in CHAINED_KEYS:
            raise ConfigError(f"{where}.defaults.{key}: set by the pipeline; remove it")
    stages: list[StagePlan] = []
    parent_path, parent_name = base, "base"
    for i, entry in enumerate(recipe.stages):
        entry = copy.deepcopy(entry)
        name, typ = entry.pop("name"), entry.pop("type")
        sw = f"{where} stage {name}"
        for key in CHAINED_KEYS:
            if key in entry:
                raise ConfigError(
                    f"{sw}.{key}: set by the pipeline (previous stage's output / <output>/{name}); remove it"
                )
        num_processes = entry.pop("num_processes", None)
        nodes = entry.pop("nodes", None)
        cls = classes[typ]
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: copy.deepcopy(v) for k, v in recipe.defaults.items() if k in fields}
        data.update(entry)
        # data paths: cwd first, then the recipe dir; inline mixes become files
        mixes = {}
        for key in [k for k in data if k.endswith("dataset_mix")]:
            value = data[key]
            if value in (None, ""):
                continue
            role = "train" if key == "dataset_mix" else key.replace("_dataset_mix", "")
            data[key] = mixes[role] = _resolve_mix(
                value, mix_dir / f"{name}_{role}.yaml", recipe_dir, f"{sw}.{key}"
            )
        pairs = data.get("policy_pairs")
        if typ == "dpo" and isinstance(pairs, dict):
            _resolve_pair_prompts(pairs, mixes, name, mix_dir, recipe_dir, f"{sw}.policy_pairs")
        if isinstance(data.get("deepspeed"), str) and data["deepspeed"] not in ("zero2", "zero3"):
            data["deepspeed"] = resolve_path(
                data["deepspeed"], recipe_dir, f"{sw}.deepspeed", "DeepSpeed config"
            )
        if typ == "rlvr" and isinstance(data.get("reward_modules"), list):
            data["reward_modules"] = [
                _resolve_reward_spec(s, recipe_dir, f"{sw}.reward_modules[{j}]")
                for j, s in enumerate(data["reward_modules"])
            ]
        data["model_name_or_path"] = parent_path
        data["output_dir"] = str(output_dir / name)
        cfg = from_dict(cls, data, sw)  # unknown keys, types, the stage's own validate()

        n_proc = recipe.launch.num_processes if num_processes is None else num_processes
        n_nodes = recipe.launch.nodes if nodes is None else nodes
        if not isinstance(n_proc, int) or not isinstance(n_nodes, int) or n_proc < 1 or n_nodes < 1:
            raise ConfigError(f"{sw}: num_processes and nodes must be integers >= 1")
        if typ == "rlvr":
            # the recipe-wide launch is for SFT/DPO; an RLVR learner spans processes only when its
            # stage says so (its GPUs are shared with the vLLM engines), on one node
            if nodes not in (None, 1):
                raise ConfigError(
                    f"{sw}.nodes: the RLVR learner runs on one node (num_processes there); "
                    f"scale generation with rollout.num_engines"
                )
            n_proc, n_nodes = num_processes or 1, 1
            cfg.engine_config(n_proc, where=sw)  # the mini-batch splits evenly over the learner processes
        elif n_proc % n_nodes:
            raise ConfigError(
                f"{sw}.num_processes: {n_proc} processes do not split evenly over {n_nodes} nodes"
            )
        if typ != "rlvr":
            cfg.accumulation_steps(n_proc, where=sw)  # total_batch_size divisible by per-device x processes

        sp = StagePlan(
            index=i,
            name=name,
            type=typ,
            cfg=cfg,
            parent=parent_name,
            out=output_dir / name,
            num_processes=n_proc,
            nodes=n_nodes,
            mixes=mixes,
        )
        _check_stage_data(sp, eval_mix if ev is not None else None)
        stages.append(sp)
        parent_path, parent_name = str(output_dir / name), name

    if ev is not None:
        _check_eval_data(eval_mix, ev, f"{where} eval")
    return Plan(
        recipe=recipe,
        recipe_path=recipe_path,
        overrides=list(overrides or []),
        output=output_dir,
        base=base,
        tiny=tiny,
        stages=stages,
        eval_mix=eval_mix,
        eval=ev,
        raw=raw,
        eval_label=eval_label,
    )


def _resolve_pair_prompts(
    pairs: dict, mixes: dict, name: str, mix_dir: Path, recipe_dir: Path, where: str
) -> None:
    """DPO `policy_pairs`: its prompt mixes (RLVR rows) resolved like any data path and registered as
    the stage's `pair_prompts` / `pair_eval_prompts` data; its user verifiers resolved like RLVR's."""
    for key, role in (("prompts", "pair_prompts"), ("eval_prompts", "pair_eval_prompts")):
        value = pairs.get(key)
        if value in (None, ""):
            continue
        pairs[key] = mixes[role] = _resolve_mix(
            value, mix_dir / f"{name}_{role}.yaml", recipe_dir, f"{where}.{key}"
        )
    if isinstance(pairs.get("reward_modules"), list):
        pairs["reward_modules"] = [
            _resolve_reward_spec(s, recipe_dir, f"{where}.reward_modules[{j}]")
            for j, s in enumerate(pairs["reward_modules"])
        ]


def role_kind(stage_type: str, role: str) -> str:
    """The data kind of one of a stage's mixes: DPO's pair prompts are RLVR rows."""
    return "rlvr" if role.startswith("pair_") else STAGE_KIND[stage_type]


def stage_reward_modules(sp: StagePlan) -> list[str]:
    if sp.type == "rlvr":
        return list(sp.cfg.reward_modules)
    if sp.type == "dpo":
        return list(sp.cfg.policy_pairs.reward_modules)
    return []


def _resolve_reward_spec(spec: str, recipe_dir: Path, where: str) -> str:
    """`file.py:fn` / `name=file.py:fn` with the file resolved like data paths; module specs pass."""
    prefix, target = "", str(spec)
    head, eq, rest = target.partition("=")
    if eq and head.strip().isidentifier() and (rest.endswith(".py") or ".py:" in rest):
        prefix, target = head.strip() + "=", rest.strip()
    file_part, colon, attr = target.rpartition(":") if ".py:" in target else (target, "", "")
    if file_part.endswith(".py"):
        found = resolve_path(file_part, recipe_dir, where, "reward module file")
        return f"{prefix}{found}{colon}{attr}"
    return spec


# ----------------------------------------------------------------------------- data checks


def _first_rows(path: Path, n: int = 5) -> list[tuple[str, dict]]:
    """The first `n` rows of a local file with their locations, read without loading the file."""
    if path.suffix == ".jsonl":
        out = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path} line {lineno}: invalid JSON ({e.msg} at column {e.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {lineno}: a row must be a JSON object")
                out.append((f"{path} line {lineno}", row))
                if len(out) >= n:
                    break
        return out
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n), None)
        return [(f"{path} row {j}", r) for j, r in enumerate(batch.to_pylist())] if batch is not None else []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None
    rows = data if isinstance(data, list) else []
    return [(f"{path} row {j}", r) for j, r in enumerate(rows[:n])]


def _dataset_names(path: Path, column: str, limit: int = 1_000_000) -> set[str]:
    """Every distinct verifier name in a local RLVR file (jsonl: scanned line by line)."""
    names: set[str] = set()
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                if line.strip():
                    try:
                        value = json.loads(line).get(column)
                    except (json.JSONDecodeError, AttributeError):
                        continue  # the stage's full validation reports it with its line number
                    if value is not None:
                        names.add(str(value))
        return names
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=[column])
        return {str(v) for v in table.column(column).unique().to_pylist() if v is not None}
    rows = json.loads(path.read_text(encoding="utf-8"))
    return {str(r.get(column)) for r in rows if isinstance(r, dict) and r.get(column) is not None}


@dataclass
class MixCheck:
    amounts: list
    rows: int | None
    dataset_names: set[str]


def check_mix(mix_path: str, kind: str, where: str) -> MixCheck:
    """Validates a data mix without loading it: the YAML (via read_spec), each local file's existence
    and first rows (columns and row format for `kind`), hub sources by their YAML entry only."""
    from .data.mixes import check_amount, read_spec
    from .data.rows import check_row, infer_kind, rename_columns

    try:
        spec = read_spec(mix_path)
    except UserError as e:
        raise type(e)(f"{where}: {e}") from None
    if spec.kind is not None and spec.kind != kind:
        raise DataError(f"{where}: {mix_path} is a '{spec.kind}' mix; this stage needs '{kind}' data")
    names: set[str] = set()
    for i, src in enumerate(spec.sources):
        check_amount(src.amount, f"{where}: {mix_path} sources[{i}]")
        if src.path is None:
            continue
        path = Path(src.path)
        if not path.is_file():
            raise DataError(f"{where}: data file not found: {path} ({mix_path} sources[{i}].path)")
        rows = _first_rows(path)
        if not rows:
            raise DataError(f"{where}: {path} has no rows")
        first = rename_columns(dict(rows[0][1]), src.columns)
        got = infer_kind(first)
        if got is not None and got != kind and not (kind == "preference" and "prompt" in first):
            raise DataError(
                f"{where}: {path} has {got} columns ({', '.join(first)}); this stage needs {kind} data"
            )
        for loc, row in rows:
            try:
                check_row(rename_columns(dict(row), src.columns), kind, loc)
            except UserError as e:
                raise DataError(f"{where}: {e}") from None
        if kind == "rlvr":
            src_col = next((old for old, new in src.columns.items() if new == "dataset"), "dataset")
            names |= _dataset_names(path, src_col)
    amounts = planmod.mix_amounts(spec)
    return MixCheck(amounts=amounts, rows=planmod.total_rows(amounts), dataset_names=names)


def _reward_api():
    """(get_spec, load) where `load(spec)` accepts what RewardRunner's extra_modules accept,
    including `name=file.py:fn`."""
    from reward_fns.registry import get_spec

    try:
        from reward_fns.user_rewards import load_extra as load
    except ImportError:  # a reward_fns without the `name=` form
        from reward_fns.user_rewards import load_user_rewards as load
    return get_spec, load


def _check_rewards(names: set[str], modules: list[str], where: str, mix: str) -> None:
    get_spec, load_user_rewards = _reward_api()
    for j, spec in enumerate(modules):
        try:
            load_user_rewards(spec)
        except ValueError as e:  # reward_fns' UnknownRewardError / RewardError
            raise ConfigError(f"{where}.reward_modules[{j}]: {e}") from None
    for name in sorted(names):
        try:
            get_spec(name)
        except ValueError as e:
            raise DataError(
                f"{where}: {mix} rows name reward '{name}' in their dataset column: {e}"
            ) from None


def _check_stage_data(sp: StagePlan, recipe_eval_mix: str | None) -> None:
    cfg = sp.cfg
    for role, mix in sp.mixes.items():
        mkind = role_kind(sp.type, role)
        field_name = {
            "train": "dataset_mix",
            "pair_prompts": "policy_pairs.prompts",
            "pair_eval_prompts": "policy_pairs.eval_prompts",
        }.get(role, f"{role}_dataset_mix")
        chk = check_mix(mix, mkind, f"{sp.where}.{field_name}")
        sp.rows[role] = chk.rows
        sp.amounts[role] = chk.amounts
        if mkind == "rlvr":
            _check_rewards(chk.dataset_names, stage_reward_modules(sp), sp.where, mix)
            sp.reward_names = sorted(set(sp.reward_names) | chk.dataset_names)
    rows = sp.rows.get("train")
    if sp.type == "dpo" and cfg.policy_pairs.enabled and sp.rows.get("pair_prompts") is not None:
        pc = cfg.policy_pairs
        prompts = sp.rows["pair_prompts"] if pc.limit is None else min(pc.limit, sp.rows["pair_prompts"])
        rows = prompts * pc.pairs_per_prompt  # at most this many pairs
    if rows is None:
        return
    if sp.type == "rlvr":
        if rows < cfg.num_unique_prompts_rollout:
            raise DataError(
                f"{sp.where}.dataset_mix: {rows} prompts, fewer than num_unique_prompts_rollout="
                f"{cfg.num_unique_prompts_rollout}"
            )
    else:
        effective = (
            cfg.per_device_train_batch_size * cfg.accumulation_steps(sp.num_processes) * sp.num_processes
        )
        if rows < effective:
            what = (
                f"policy_pairs.prompts: at most {rows} pairs"
                if sp.type == "dpo" and cfg.policy_pairs.enabled
                else f"dataset_mix: {rows} rows"
            )
            raise DataError(f"{sp.where}.{what}, fewer than one effective batch ({effective})")


def _check_eval_data(mix: str, ev: EvalSpec, where: str) -> None:
    chk = check_mix(mix, "rlvr", f"{where}.dataset_mix")
    _check_rewards(chk.dataset_names, ev.reward_modules, where, mix)


# ----------------------------------------------------------------------------- dry run


def format_plan(plan: Plan) -> str:
    """The human-readable plan `--dry-run` prints."""
    L = []
    r = plan.recipe
    L.append(
        f"recipe {r.name} ({plan.recipe_path}) -> {plan.output}   [dry run: nothing is trained or written]"
    )
    if r.description:
        L.append(f"  {r.description.strip()}")
    base_arch = (
        planmod.tiny_arch(dataclasses.asdict(plan.tiny)) if plan.tiny else planmod.resolve_arch(plan.base)
    )
    if plan.tiny:
        L.append(
            f"base model: tiny {plan.tiny.arch} built offline into {plan.base} "
            f"({planmod.count_params(base_arch):,} parameters)"
        )
    elif base_arch:
        L.append(
            f"base model: {plan.base} ({base_arch.name}, {planmod.count_params(base_arch) / 1e9:.2f}B parameters)"
        )
    else:
        L.append(
            f"base model: {plan.base} (architecture unknown: no memory estimate; add it to "
            f"plan.KNOWN_ARCHS or use a local dir with config.json)"
        )
    if plan.eval is not None:
        ev = plan.eval
        L.append(
            f"held-out eval after each stage: {plan.eval_label} ({'first ' + str(ev.limit) if ev.limit else 'all'} prompts, "
            f"{ev.samples} sample(s), temperature {ev.resolved_temperature}, max {ev.max_tokens} tokens)"
        )
    gpu = r.launch.gpu_memory_gb
    L.append(
        f"launch: {r.launch.num_processes} process(es) on {r.launch.nodes} node(s) for SFT/DPO"
        + (f"; {gpu:g} GB per GPU" if gpu else "")
    )
    for sp in plan.stages:
        L.append("")
        L += _format_stage(sp, base_arch, len(plan.stages), gpu)
    return "\n".join(L)


def _format_amounts(amounts: list, indent: str) -> list[str]:
    out = []
    for a in amounts:
        if a.how == "unknown":
            out.append(f"{indent}{a.name}: size unknown (add `num_rows:` to the source for planning)")
        else:
            out.append(
                f"{indent}{a.name}: {planmod.fmt_int(a.selected)} of {planmod.fmt_int(a.rows)} rows ({a.how})"
            )
    return out


def _format_stage(sp: StagePlan, base_arch, n_stages: int, gpu_gb: float | None = None) -> list[str]:
    cfg = sp.cfg
    L = [f"[{sp.index + 1}/{n_stages}] {sp.name} ({sp.type}): {cfg.model_name_or_path} -> {sp.out}"]
    for role, mix in sp.mixes.items():
        rows = sp.rows.get(role)
        L.append(f"  data ({role}): {mix}, {planmod.fmt_int(rows)} rows")
        L += _format_amounts(sp.amounts.get(role, []), "      ")
    rows = sp.rows.get("train")
    zero, offload = planmod.zero_stage_of(cfg.deepspeed)
    if sp.type in ("sft", "dpo"):
        accum = cfg.accumulation_steps(sp.num_processes)
        eff = cfg.per_device_train_batch_size * accum * sp.num_processes
        unit = "pairs" if sp.type == "dpo" else "sequences"
        L.append(
            f"  batch: effective {eff} {unit} = {cfg.per_device_train_batch_size} per process x "
            f"{sp.num_processes} process(es) on {sp.nodes} node(s) x {accum} accumulation step(s)"
        )
        if rows is not None:
            per_epoch = rows // eff
            full = int(-(-per_epoch * cfg.num_train_epochs // 1))
            steps = min(full, cfg.max_train_steps) if cfg.max_train_steps else full
            cap = (
                f", capped by max_train_steps {cfg.max_train_steps}"
                if cfg.max_train_steps and cfg.max_train_steps < full
                else ""
            )
            L.append(
                f"  steps: {cfg.num_train_epochs:g} epoch(s) x {per_epoch:,} steps/epoch = {steps:,} optimizer steps{cap}"
            )
            warm = -(-int(cfg.warmup_ratio * steps * 1000) // 1000)
            L.append(
                f"  lr: {cfg.learning_rate:g} {cfg.lr_scheduler_type}, warmup ratio {cfg.warmup_ratio:g} (~{warm} steps)"
            )
        else:
            cap = f" (max_train_steps {cfg.max_train_steps})" if cfg.max_train_steps else ""
            L.append(
                f"  steps: unknown until the data is loaded{cap}; lr {cfg.learning_rate:g} {cfg.lr_scheduler_type}"
            )
        if sp.type == "sft":
            L.append(
                f"  loss: token cross-entropy, {cfg.loss_reduction} reduction; max_seq_length {cfg.max_seq_length}"
                f"{', packed' if cfg.packing else ''}"
            )
        else:
            if cfg.policy_pairs.enabled:
                pc = cfg.policy_pairs
                L.append(
                    f"  pairs: the starting model's own answers, {pc.samples} per prompt at T={pc.temperature:g} "
                    f"(max {pc.max_tokens} tokens), up to {pc.pairs_per_prompt} (right, wrong) pair(s) per prompt"
                )
            nll = f" + {cfg.nll_coef:g} x NLL(chosen)" if cfg.nll_coef else ""
            L.append(
                f"  loss: {cfg.loss_type} beta {cfg.beta:g}{nll}; reference {cfg.reference}; "
                f"max_seq_length {cfg.max_seq_length}"
            )
    else:
        steps = cfg.num_rl_steps
        per_step = cfg.rollout_batch
        L.append(
            f"  rollouts: {cfg.num_unique_prompts_rollout} prompts x {cfg.num_samples_per_prompt_rollout} "
            f"sample(s) = {per_step} sequences per RL step, temperature {cfg.temperature:g}, "
            f"response length {cfg.response_length}"
        )
        how = (
            f"max_train_steps {cfg.max_train_steps}"
            if cfg.max_train_steps
            else f"{cfg.total_episodes:,} episodes / {per_step}"
        )
        passes = (
            f"; {steps * cfg.num_unique_prompts_rollout / rows:.2f} passes over {rows:,} prompts"
            if rows
            else ""
        )
        L.append(
            f"  steps: {how} = {steps:,} RL steps x {cfg.num_epochs} epoch(s) x {cfg.num_mini_batches} "
            f"mini-batch(es) = {steps * cfg.num_epochs * cfg.num_mini_batches:,} optimizer steps{passes}"
        )
        mini = per_step // cfg.num_mini_batches
        n_proc = sp.num_processes
        L.append(
            f"  batch: mini-batch {mini} sequences = {cfg.per_device_train_batch_size} per process x "
            f"{n_proc} learner process(es) x {mini // (cfg.per_device_train_batch_size * n_proc)} "
            f"accumulation step(s)"
        )
        kl = f"beta {cfg.beta:g} ({cfg.estimator})" if cfg.beta > 0 else "no KL (beta 0)"
        extra = (
            f"PPO clip {cfg.cliprange:g}, value clip {cfg.cliprange_value:g}, vf_coef {cfg.vf_coef:g}, "
            f"gamma {cfg.gamma:g}, lambda {cfg.lam:g}, value model "
            f"{cfg.value_model_name_or_path or '(policy + zero head)'}"
            if cfg.algorithm == "ppo"
            else f"GRPO group {cfg.num_samples_per_prompt_rollout}"
        )
        L.append(f"  {cfg.algorithm}: lr {cfg.learning_rate:g} {cfg.lr_scheduler_type}, {kl}, {extra}")
        pen = f", no-EOS penalty {cfg.penalty_reward_value:g}" if cfg.non_stop_penalty else ""
        names = (
            ", ".join(sp.reward_names)
            if sp.reward_names
            else "named by the data's `dataset` column (hub data: checked when loaded)"
        )
        L.append(f"  rewards: verification x {cfg.verification_reward:g}{pen}; verifiers: {names}")
        rc = cfg.rollout_config()
        L.append(
            f"  engines: {rc.num_engines} vLLM engine(s) on {rc.device}, tensor parallel {rc.tensor_parallel_size}"
            f"{', one-step off-policy' if cfg.async_mode else ''}"
        )
    # memory
    arch = base_arch
    if arch is None:
        L.append("  memory: unknown architecture")
        return L
    value_arch = None
    if sp.type == "rlvr" and cfg.algorithm == "ppo" and cfg.value_model_name_or_path:
        value_arch = planmod.resolve_arch(cfg.value_model_name_or_path) or arch
    mem = planmod.estimate_memory(sp.type, cfg, arch, sp.num_processes, value_arch)
    w = planmod.dtype_bytes(cfg.dtype)
    zs = (
        f"ZeRO-{zero}" + (" (optimizer offloaded to CPU)" if offload else "")
        if zero
        else "no ZeRO (DDP replicas)"
    )
    L.append(
        f"  memory ({arch.name}, {'bf16' if w == 2 else 'fp32'} weights, {zs}, gradient checkpointing "
        f"{'on' if cfg.gradient_checkpointing else 'off'}):"
    )
    L += planmod.format_memory(mem)
    if gpu_gb:
        budget = gpu_gb * planmod.GB
        if mem.learner_total > budget:
            L.append(
                f"    WARNING: the training process estimate ({planmod.fmt_gb(mem.learner_total)}) exceeds "
                f"{gpu_gb:g} GB per GPU"
            )
        if mem.engine:
            weights, kv = mem.engine.get("weights", 0.0), mem.engine.get("kv cache", 0.0)
            if weights > budget:
                L.append(
                    f"    WARNING: the vLLM engine's weights ({planmod.fmt_gb(weights)}) exceed {gpu_gb:g} GB "
                    f"per GPU: raise rollout.tensor_parallel_size"
                )
            elif weights + kv > budget:
                free = max(budget * 0.9 - weights, 1.0)
                L.append(
                    f"    (vLLM has ~{planmod.fmt_gb(free)} for KV cache at 90% utilisation: it generates "
                    f"the batch in ~{-(-kv // free):.0f} waves)"
                )
    return L


# ----------------------------------------------------------------------------- stage state


def _cmp_config(old: dict, new: dict, cls: type | None = None) -> list[str]:
    """Keys whose values differ, ignoring NON_SEMANTIC_KEYS (JSON round-trip normalises types). A key
    the old record lacks counts as equal when the new value is the field's default: a config field
    added to the toolkit later must not invalidate every finished run."""
    # paths inside the run directory compare relative to it: a moved or copied run is the same run
    a = relative_to_run(json.loads(json.dumps(old, default=str)), _run_root(old))
    b = relative_to_run(json.loads(json.dumps(new, default=str)), _run_root(new))
    defaults = {}
    if cls is not None:
        inst_defaults = {f.name: f for f in dataclasses.fields(cls)}
        for k, f in inst_defaults.items():
            if f.default is not dataclasses.MISSING:
                defaults[k] = json.loads(json.dumps(to_dict(f.default), default=str))
            elif f.default_factory is not dataclasses.MISSING:
                defaults[k] = json.loads(json.dumps(to_dict(f.default_factory()), default=str))
    keys = (set(a) | set(b)) - NON_SEMANTIC_KEYS
    diff = []
    for k in sorted(keys):
        if k not in a and k in defaults and b.get(k) == defaults[k]:
            continue
        if a.get(k) != b.get(k):
            diff.append(k)
    return diff


def _run_root(stage_cfg: dict) -> str:
    """A recipe stage writes `<output>/<stage>`; its run directory is `<output>`."""
    out = stage_cfg.get("output_dir")
    return os.path.dirname(os.path.normpath(out)) if out else "\0"


def _describe_diff(old: dict, new: dict, keys: list[str]) -> str:
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]]
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return "; ".join(parts) + more


def _fingerprints(sp: StagePlan) -> dict[str, str]:
    return {role: lin.mix_fingerprint(mix)["fingerprint"] for role, mix in sp.mixes.items()}


def _conflict(sp: StagePlan, what: str) -> ConfigError:
    return ConfigError(
        f"{sp.where}: {sp.out} holds a run with a different {what}; use another --output, "
        f"or delete {sp.out} (and the stages after it) to train it again"
    )


def assess_stages(plan: Plan, base_digest: str) -> None:
    """Sets each stage's status (done / resume / adopt / pending) or raises on a conflict, before
    anything is trained. A stage can only be done if its parent is done (or is the base)."""
    from .train.checkpoint import list_steps, verify_model

    parent_digest: str | None = base_digest
    for sp in plan.stages:
        new_cfg = to_dict(sp.cfg)
        rec = lin.read(sp.out)
        digest = verify_model(sp.out) if sp.out.is_dir() else None
        if digest is not None:
            if rec is None or rec.get("status") != "finished":
                saved = sp.out / "resolved_config.yaml"
                if (
                    saved.is_file()
                    and not _cmp_config(yaml.safe_load(saved.read_text()) or {}, new_cfg, type(sp.cfg))
                    and parent_digest is not None
                ):
                    sp.status, sp.note = "adopt", "finished model without lineage; recording it"
                    parent_digest = digest
                    continue
                raise _conflict(sp, "or unrecorded config (no lineage.json)")
            diff = _cmp_config(rec.get("config", {}), new_cfg, type(sp.cfg))
            if diff:
                raise _conflict(sp, f"config ({_describe_diff(rec.get('config', {}), new_cfg, diff)})")
            if parent_digest is None:
                raise ConfigError(
                    f"{sp.where}: {sp.out} is finished but the stage before it is not; "
                    f"delete {sp.out} (and the stages after it) or use another --output"
                )
            if rec.get("parent", {}).get("digest") != parent_digest:
                raise _conflict(
                    sp,
                    f"parent checkpoint (digest {rec.get('parent', {}).get('digest')} != "
                    f"{parent_digest} now)",
                )
            if rec.get("model", {}).get("digest") != digest:
                raise _conflict(sp, "model than its lineage records")
            old_fp = {k: v.get("fingerprint") for k, v in (rec.get("data") or {}).items()}
            new_fp = _fingerprints(sp)
            changed = [k for k in new_fp if old_fp.get(k) != new_fp[k]]
            if changed:
                raise _conflict(sp, f"data ({', '.join(sp.mixes[k] for k in changed)} changed)")
            sp.status = "done"
            parent_digest = digest
            continue
        # not finished
        started = rec is not None or list_steps(sp.out / "checkpoints")
        if started:
            old_cfg = rec.get("config") if rec else None
            if old_cfg is None and (sp.out / "resolved_config.yaml").is_file():
                old_cfg = yaml.safe_load((sp.out / "resolved_config.yaml").read_text()) or {}
            if old_cfg is not None:
                diff = _cmp_config(old_cfg, new_cfg, type(sp.cfg))
                if diff:
                    raise _conflict(
                        sp, f"config ({_describe_diff(old_cfg, new_cfg, diff)}) in its interrupted run"
                    )
            if (
                rec
                and parent_digest is not None
                and rec.get("parent", {}).get("digest") not in (None, parent_digest)
            ):
                raise _conflict(sp, "parent checkpoint in its interrupted run")
            steps = list_steps(sp.out / "checkpoints")
            sp.status = "resume" if steps else "pending"
            sp.note = f"resuming from checkpoint step {steps[-1][0]}" if steps else ""
        parent_digest = None  # everything after a stage that still has to train is not done


# ----------------------------------------------------------------------------- running


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each in-process stage starts from a clean slate."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    except Exception:  # noqa: BLE001 - nothing to reset
        pass


def _say(msg: str) -> None:
    print(f"[pipeline] {msg}", flush=True)


def _node_rank() -> int:
    return int(os.environ.get("NODE_RANK", os.environ.get("MACHINE_RANK", "0")))


def launch_stage(sp: StagePlan, master_port: int) -> None:
    """A multi-process SFT/DPO stage: torchrun over `num_processes` (and `nodes`; the same command runs
    on every node with NODE_RANK / MASTER_ADDR set), reading the resolved config written here."""
    cfg_path = sp.out / "launch_config.yaml"
    sp.out.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(to_dict(sp.cfg), sort_keys=False))
    per_node = sp.num_processes // sp.nodes
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(per_node)]
    if sp.nodes > 1:
        cmd += [
            "--nnodes",
            str(sp.nodes),
            "--node_rank",
            str(_node_rank()),
            "--master_addr",
            os.environ.get("MASTER_ADDR", "localhost"),
            "--master_port",
            os.environ.get("MASTER_PORT", str(master_port)),
        ]
    else:
        cmd += ["--master_port", str(master_port)]
    cmd += ["-m", "open_instruct.cli", sp.type, "--config", str(cfg_path)]
    _say(f"{sp.name}: launching {' '.join(cmd)}")
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise RuntimeError(f"stage {sp.name}: launched processes exited with status {res.returncode}")


def _stage_lineage(
    plan: Plan, sp: StagePlan, parent_digest: str, status: str, started: str, extra: dict | None = None
) -> dict:
    return lin.base_record(
        recipe={
            "name": plan.recipe.name,
            "path": str(plan.recipe_path),
            "sha256": lin.sha256_file(plan.recipe_path),
            "overrides": plan.overrides,
        },
        stage={"name": sp.name, "type": sp.type, "index": sp.index},
        status=status,
        parent={
            "name_or_path": sp.cfg.model_name_or_path,
            "stage": None if sp.parent == "base" else sp.parent,
            "digest": parent_digest,
        },
        model={"digest": None},
        data={role: {"path": mix, **lin.mix_fingerprint(mix)} for role, mix in sp.mixes.items()},
        rewards={},
        config=to_dict(sp.cfg),
        launch={"num_processes": sp.num_processes, "nodes": sp.nodes},
        started_at=started,
        **(extra or {}),
    )


def finish_lineage(
    plan: Plan, sp: StagePlan, parent_digest: str, digest: str, started: str, seconds: float | None
) -> dict:
    """The finished record: data content hashes (loads each mix), reward sources (RLVR)."""
    rec = _stage_lineage(plan, sp, parent_digest, "finished", started)
    names: set[str] = set()
    for role, mix in sp.mixes.items():
        kind = role_kind(sp.type, role)
        rec["data"][role] = lin.mix_record(mix, kind)
        if kind == "rlvr":
            from .data.mixes import load_mix

            names |= set(load_mix(mix, kind="rlvr").dataset.unique("dataset"))
    if sp.type == "dpo" and sp.cfg.policy_pairs.enabled:  # the pairs the policy's samples made
        for split in ("train", "eval"):
            made = sp.out / "policy_pairs" / f"{split}.jsonl"
            if made.is_file():
                rec["data"][f"policy_pairs_{split}"] = lin.mix_record(str(made), "preference")
    if names:
        _, load_user_rewards = _reward_api()
        modules = stage_reward_modules(sp)
        for spec in modules:
            load_user_rewards(spec)
        rec["rewards"] = lin.reward_sources(sorted(names))
        rec["reward_modules"] = [{"spec": s, **_module_hash(s)} for s in modules]
    rec["model"] = {"digest": digest, "path": str(sp.out)}
    rec["finished_at"] = lin.now()
    rec["wall_seconds"] = seconds
    return rec


def _module_hash(spec: str) -> dict:
    target = spec.split("=", 1)[-1]
    file_part = target.rsplit(":", 1)[0] if ".py:" in target else target
    if file_part.endswith(".py") and Path(file_part).is_file():
        return {"file_sha256": lin.sha256_file(Path(file_part))}
    return {}


def build_base(plan: Plan) -> None:
    """Builds the tiny base model into <output>/base (atomically; byte-identical for the same spec)."""
    if plan.tiny is None:
        return
    base = Path(plan.base)
    spec = dataclasses.asdict(plan.tiny)
    marker = base / "tiny_spec.json"
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return
        raise ConfigError(
            f"{plan.where}.base_model: {base} was built from a different tiny spec; "
            f"use another --output or delete {plan.output}"
        )
    from .model.tiny import build_tiny

    tmp = base.parent / ".tmp-base"
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny(tmp, **spec)
    (tmp / "tiny_spec.json").write_text(json.dumps(spec, indent=1))
    if base.exists():
        shutil.rmtree(base)
    os.replace(tmp, base)
    _say(f"built tiny {plan.tiny.arch} base model into {base}")


# ----------------------------------------------------------------------------- held-out eval


def eval_settings(ev: EvalSpec, mix: str) -> dict:
    return {
        "dataset_mix": mix,
        "max_tokens": ev.max_tokens,
        "limit": ev.limit,
        "samples": ev.samples,
        "temperature": ev.resolved_temperature,
        "seed": ev.seed,
        "max_prompt_length": ev.max_prompt_length,
        "reward_modules": list(ev.reward_modules),
        "rollout": dict(ev.rollout),
    }


class EvalSession:
    """One held-out eval engine reused for the base model and every stage: the next model's weights
    are synced into the running engine (the same path RLVR uses, exact to ~1e-6 in log-prob) instead
    of starting a new engine, which costs 10-20 s on CPU. A model with another architecture gets a
    fresh engine. Closed before RLVR stages (their engines need the CPUs / GPUs)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.group = None
        self.runner = None
        self.arch_key = None
        self.rows_cache: dict[str, list] = {}

    @staticmethod
    def _arch_key(model_dir: str) -> str:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        for k in ("dtype", "torch_dtype", "transformers_version", "_name_or_path"):
            cfg.pop(k, None)
        return json.dumps(cfg, sort_keys=True)

    def _rows(self, model_dir: str, tokenizer):
        from .data.mixes import load_mix
        from .data.tokenize import tokenize_data, tokenizer_fingerprint
        from .train.stage import rows as take_rows

        ev = self.plan.eval
        key = tokenizer_fingerprint(tokenizer)
        if key not in self.rows_cache:
            tok = tokenize_data(
                load_mix(self.plan.eval_mix, kind="rlvr"),
                tokenizer,
                "rlvr",
                max_prompt_length=ev.max_prompt_length,
            )
            n = len(tok.dataset) if ev.limit is None else min(ev.limit, len(tok.dataset))
            self.rows_cache[key] = take_rows(tok.dataset, range(n))
        return self.rows_cache[key]

    def evaluate(self, model_dir: str):
        from safetensors.torch import load_file

        from .config import from_dict as build
        from .evaluate import evaluate_rows
        from .model.policy import load_tokenizer
        from .rl.rollout import RolloutConfig, RolloutGroup

        ev = self.plan.eval
        _, load_user_rewards = _reward_api()
        if self.runner is None:
            from reward_fns import RewardRunner

            for spec in ev.reward_modules:
                load_user_rewards(spec)
            self.runner = RewardRunner(extra_modules=list(ev.reward_modules))
        key = self._arch_key(model_dir)
        if self.group is not None and key == self.arch_key:
            weights = {}
            for f in sorted(Path(model_dir).glob("*.safetensors")):
                weights.update(load_file(str(f)))
            self.group.sync_weights(weights)
        else:
            self.close_engine()
            cfg = build(
                RolloutConfig,
                {
                    "model": model_dir,
                    "seed": ev.seed,
                    "dtype": "float32",
                    "max_model_len": ev.max_prompt_length + ev.max_tokens,
                    **ev.rollout,
                },
                "eval.rollout",
            )
            self.group = RolloutGroup(cfg)
            self.arch_key = key
        tokenizer = load_tokenizer(model_dir)
        return evaluate_rows(
            self.group,
            tokenizer,
            self._rows(model_dir, tokenizer),
            self.runner,
            samples=ev.samples,
            temperature=ev.resolved_temperature,
            max_tokens=ev.max_tokens,
            seed=ev.seed,
        )

    def close_engine(self) -> None:
        if self.group is not None:
            self.group.shutdown()
        self.group, self.arch_key = None, None

    def close(self) -> None:
        self.close_engine()
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def heldout_eval(plan: Plan, session: EvalSession, model_dir: str, digest: str, dest: Path) -> dict | None:
    """Evaluates `model_dir` on the recipe's held-out mix into `dest` (reused when the model digest and
    eval settings are unchanged). Returns the summary."""
    ev = plan.eval
    if ev is None:
        return None
    settings = eval_settings(ev, plan.eval_mix)
    if dest.is_file():
        try:
            old = json.loads(dest.read_text())
            if old.get("model_digest") == digest and old.get("settings") == settings:
                return old["summary"]
        except (json.JSONDecodeError, KeyError):
            pass
    t0 = time.time()
    res = session.evaluate(model_dir)
    summary = res.summary()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.stem + "_samples.jsonl"), "w") as f:
        for p in res.per_prompt:
            f.write(json.dumps(p) + "\n")
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {
                "model": model_dir,
                "model_digest": digest,
                "settings": settings,
                "summary": summary,
                "seconds": round(time.time() - t0, 2),
            },
            indent=1,
        )
    )
    os.replace(tmp, dest)
    return summary


# ----------------------------------------------------------------------------- the run


@dataclass
class StageResult:
    name: str
    type: str
    status: str  # trained | resumed | skipped
    seconds: float | None
    steps: int | None
    digest: str | None
    heldout: dict | None
    stage_eval: dict | None  # the stage's own eval.json (DPO preference accuracy, RLVR eval/*)
    out: Path


def _last_step(out: Path) -> int | None:
    from .track import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    return max((r.get("step", 0) for r in rows), default=None) if rows else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def run_plan(plan: Plan) -> list[StageResult]:
    from .train.checkpoint import model_digest

    main_node = _node_rank() == 0
    plan.output.mkdir(parents=True, exist_ok=True)
    build_base(plan)
    base_digest = model_digest(plan.base)
    assess_stages(plan, base_digest)  # conflicts with finished stages fail here, before anything runs
    if main_node:
        (plan.output / "recipe.yaml").write_text(yaml.safe_dump(plan.raw, sort_keys=False))
    results: list[StageResult] = []
    t_all = time.time()
    session = EvalSession(plan)
    try:
        return _run_stages(plan, session, base_digest, results, t_all, main_node)
    finally:
        session.close()


def _run_stages(
    plan: Plan, session: EvalSession, base_digest: str, results: list, t_all: float, main_node: bool
) -> list[StageResult]:
    from .train.checkpoint import verify_model

    gpu_eval = plan.eval is not None and plan.eval.rollout.get("device") == "cuda"
    base_eval = None
    if plan.eval is not None and plan.eval.base and main_node:
        _say(f"held-out eval of the base model ({plan.base})")
        base_eval = heldout_eval(plan, session, plan.base, base_digest, plan.output / "base_eval.json")
    results.append(
        StageResult(
            "base",
            "-",
            "built" if plan.tiny else "-",
            None,
            None,
            base_digest,
            base_eval,
            None,
            Path(plan.base),
        )
    )

    parent_digest = base_digest
    for sp in plan.stages:
        if sp.status == "done":
            rec = lin.read(sp.out) or {}
            digest = rec.get("model", {}).get("digest")
            _say(
                f"stage {sp.name}: skipped -- finished model verified (digest {digest}), same config, "
                f"same parent, same data"
            )
            status, seconds = "skipped", rec.get("wall_seconds")
        elif sp.status == "adopt":
            digest = verify_model(sp.out)
            _say(f"stage {sp.name}: {sp.note}")
            if main_node:
                lin.write(sp.out, finish_lineage(plan, sp, parent_digest, digest, lin.now(), None))
            status, seconds = "skipped", None
        else:
            started = lin.now()
            status = "resumed" if sp.status == "resume" else "trained"
            _say(
                f"stage {sp.name} ({sp.type}): {sp.note or 'training'} from {sp.cfg.model_name_or_path} "
                f"-> {sp.out}"
            )
            if main_node:
                prev = lin.read(sp.out)
                lin.write(
                    sp.out,
                    _stage_lineage(
                        plan, sp, parent_digest, "running", (prev or {}).get("started_at", started)
                    ),
                )
            if sp.type == "rlvr" or gpu_eval:
                session.close_engine()  # the stage's own engines / the GPUs need the room
            t0 = time.time()
            if sp.num_processes > 1:
                launch_stage(sp, plan.recipe.launch.master_port)
            else:
                reset_accelerate()
                stage_runner(sp.type)(sp.cfg)
                reset_accelerate()
            seconds = round(time.time() - t0, 2)
            digest = verify_model(sp.out)
            if digest is None:
                raise RuntimeError(f"stage {sp.name}: finished without an intact published model in {sp.out}")
            if main_node:
                prev = lin.read(sp.out) or {}
                rec = finish_lineage(
                    plan, sp, parent_digest, digest, prev.get("started_at", started), seconds
                )
                lin.write(sp.out, rec)
            _say(f"stage {sp.name}: done in {seconds:.0f}s (model digest {digest})")
        heldout = None
        if plan.eval is not None and main_node:
            _say(f"held-out eval of stage {sp.name}")
            heldout = heldout_eval(plan, session, str(sp.out), digest, sp.out / "heldout_eval.json")
        results.append(
            StageResult(
                sp.name,
                sp.type,
                status,
                seconds,
                _last_step(sp.out),
                digest,
                heldout,
                _read_json(sp.out / "eval.json"),
                sp.out,
            )
        )
        parent_digest = digest
    if main_node:
        total = time.time() - t_all
        print(format_summary(plan, results, total), flush=True)
        report = write_report(plan, results, total)
        print(f"report: {report}", flush=True)
    return results


# ----------------------------------------------------------------------------- summary + report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def heldout_label(plan: Plan) -> str:
    ev = plan.eval
    if ev is None:
        return "held-out"
    how = (
        "greedy pass@1"
        if ev.samples == 1 and ev.resolved_temperature == 0
        else f"pass@1, {ev.samples} samples at T={ev.resolved_temperature:g}"
    )
    return f"held-out reward ({how})"


def stage_metric(r: StageResult) -> str:
    """The number each stage type should improve, from the stage's own eval.json."""
    ev = r.stage_eval or {}
    if r.type == "dpo" and "preference_accuracy" in ev:
        pa = ev["preference_accuracy"]
        return f"preference accuracy {_pct(pa.get('before'))} -> {_pct(pa.get('after'))}"
    if r.type == "rlvr" and ("after" in ev or "before" in ev):
        b = (ev.get("before") or {}).get("eval/reward_mean")
        a = (ev.get("after") or {}).get("eval/reward_mean")
        return f"mean verifiable reward {_pct(b)} -> {_pct(a)}"
    return ""


def _fmt_secs(s: float | None) -> str:
    if s is None:
        return "-"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def summary_rows(plan: Plan, results: list[StageResult]) -> list[list[str]]:
    rows = []
    prev = None
    for r in results:
        acc = (r.heldout or {}).get("reward_mean")
        delta = f" ({100 * (acc - prev):+.1f})" if acc is not None and prev is not None else ""
        rows.append(
            [
                r.name,
                r.type,
                r.status,
                _fmt_secs(r.seconds),
                "-" if r.steps is None else str(r.steps),
                _pct(acc) + delta,
                stage_metric(r),
            ]
        )
        prev = acc if acc is not None else prev
    return rows


SUMMARY_HEADER = ["stage", "type", "status", "time", "steps", "held-out", "stage metric"]


def format_summary(plan: Plan, results: list[StageResult], total: float) -> str:
    rows = summary_rows(plan, results)
    header = list(SUMMARY_HEADER)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [
        "",
        f"== recipe {plan.recipe.name}: {len(plan.stages)} stage(s) in {plan.output} "
        f"({_fmt_secs(total)} this run)",
        f"   held-out = {heldout_label(plan)} on {plan.eval_label}"
        if plan.eval
        else "   (no held-out eval: eval: null)",
        line(header),
        line(["-" * w for w in widths]),
    ]
    out += [line(r) for r in rows]
    return "\n".join(out)


def write_report(plan: Plan, results: list[StageResult], total: float) -> Path:
    git = lin.git_info()
    L = [
        f"# Recipe `{plan.recipe.name}`",
        "",
        f"Run directory `{plan.output}`; recipe `{plan.recipe_path}`"
        + (f" with `--set {' '.join(plan.overrides)}`" if plan.overrides else "")
        + ".",
        f"Generated {lin.now()}; git commit `{git['commit']}`{' (dirty)' if git['dirty'] else ''}.",
        "",
    ]
    if plan.recipe.description:
        L += [plan.recipe.description.strip(), ""]
    L += ["## Summary", ""]
    if plan.eval:
        L += [
            f"Held-out = {heldout_label(plan)} on `{plan.eval_label}`"
            f"{f' (first {plan.eval.limit} prompts)' if plan.eval.limit else ''}; the number in brackets is the "
            f"change from the previous row.",
            "",
        ]
    L.append("| " + " | ".join(SUMMARY_HEADER) + " |")
    L.append("|" + "---|" * len(SUMMARY_HEADER))
    for row in summary_rows(plan, results):
        L.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    L.append("")
    for r in results[1:]:
        rec = lin.read(r.out) or {}
        L += [f"## {r.name} ({r.type})", ""]
        parent = rec.get("parent", {})
        L.append(f"- started from `{parent.get('name_or_path')}` (digest `{parent.get('digest')}`)")
        L.append(
            f"- model `{r.out}` (digest `{r.digest}`), status {r.status}, wall time {_fmt_secs(r.seconds)}"
        )
        for role, d in (rec.get("data") or {}).items():
            L.append(
                f"- data ({role}) `{d.get('path')}`: {d.get('rows', '?')} rows, content hash "
                f"`{str(d.get('content_hash'))[:16]}`"
            )
        for name, info in (rec.get("rewards") or {}).items():
            L.append(
                f"- reward `{name}` = `{info.get('function')}` (source sha256 `{str(info.get('source_sha256'))[:16]}`)"
            )
        if r.stage_eval:
            L.append(f"- stage eval: {stage_metric(r) or json.dumps(r.stage_eval)[:300]}")
        L.append("")
        for png in sorted(r.out.glob("*.png")):
            rel = os.path.relpath(png, plan.output)
            L += [f"![{png.stem}]({rel})", ""]
        if r.heldout:
            L += ["| held-out metric | value |", "|---|---|"]
            L += [
                f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in r.heldout.items()
            ]
            L.append("")
    if results and results[0].heldout:
        L += ["## base model", "", "| held-out metric | value |", "|---|---|"]
        L += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in results[0].heldout.items()
        ]
        L.append("")
    path = plan.output / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- entry points


def run_recipe(
    recipe: str | Path, overrides: list[str] | None = None, output: str | None = None, dry_run: bool = False
) -> list[StageResult] | str:
    """Validates the recipe, then prints the plan (dry run) or runs it. Returns the results (or, for
    a dry run, the plan text)."""
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="oi-dry-run-") as scratch:
            plan = load_plan(recipe, overrides, output, scratch=Path(scratch))
            text = format_plan(plan)
        print(text, flush=True)
        return text
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the stages show their own progress; per-dataset bars drown it in the log
    with tempfile.TemporaryDirectory(prefix="oi-validate-") as scratch:
        load_plan(recipe, overrides, output, scratch=Path(scratch))  # everything checked, nothing written
    plan = load_plan(recipe, overrides, output)  # the same, with inline mixes written into <output>/mixes
    try:
        return run_plan(plan)
    finally:
        _shutdown_ray()


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001
        pass


def run_command(args) -> int:
    run_recipe(args.recipe, overrides=args.overrides, output=args.output, dry_run=args.dry_run)
    return 0
