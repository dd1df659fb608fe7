"""Loading a recipe: the YAML, `--set` overrides, every stage's config through its strict dataclass, the
paths it names, and the data checks (checks.py) -- all before anything heavy starts. Any problem is ONE
line naming the recipe, the stage and the key."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..config import from_dict, load_yaml, parse_override, set_key
from ..errors import ConfigError, DataError
from ..io import atomic_write_text
from .checks import check_eval_data, check_stage_data
from .schema import RECIPE_KEYS, Plan, Recipe, StagePlan, TinyBase
from .stages import STAGE_TYPES, stage_classes

# Keys of a stage entry that belong to the recipe, not to the stage's config dataclass.
RECIPE_STAGE_KEYS = ("name", "type", "num_processes", "nodes")
# Set by the recipe runner; a recipe that sets them would break the chaining.
CHAINED_KEYS = ("model_name_or_path", "output_dir")
RESERVED_STAGE_NAMES = ("base", "mixes", "report", "logs")


# ----------------------------------------------------------------------------- paths


def resolve_path(value: str, recipe_dir: Path, where: str, what: str = "data file") -> str:
    """A path the recipe names: absolute as given; relative against the current directory, then the
    recipe's directory, then its parent (a project laid out as recipes/ next to data_mixes/), then the
    toolkit's shipped data (so a shipped recipe runs from any directory)."""
    from ..shipped import resolve_data_path

    p = Path(value).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise DataError(f"{where}: {what} not found: {value}")
        return str(p)
    found = resolve_data_path(str(p), recipe_dir)
    if found is not None:
        return str(found)
    raise DataError(
        f"{where}: {what} not found: {value} (looked in the current directory, {recipe_dir} and the "
        f"toolkit's shipped data)"
    )


def resolve_reward_spec(spec: str, recipe_dir: Path, where: str) -> str:
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


def _materialise_inline_mix(mix: dict, dest: Path, recipe_dir: Path, where: str) -> str:
    """An inline `dataset_mix: {sources: [...]}` is written to `dest` (local `path:` sources resolved
    like every data path, then made relative to `dest`) so that every stage reads a mix file."""
    mix = copy.deepcopy(mix)
    for i, src in enumerate(mix.get("sources") or []):
        if isinstance(src, dict) and src.get("path"):
            found = Path(resolve_path(str(src["path"]), recipe_dir, f"{where}.sources[{i}].path"))
            src["path"] = os.path.relpath(found.resolve(), dest.parent.resolve())
    atomic_write_text(dest, yaml.safe_dump(mix, sort_keys=False))
    return str(dest)


def resolve_mix(value, dest: Path, recipe_dir: Path, where: str):
    """A data-mix value: an inline mix (dict) is written to `dest`, a path is resolved; anything else is
    left for the config's type check to name."""
    if isinstance(value, dict):
        return _materialise_inline_mix(value, dest, recipe_dir, where)
    if isinstance(value, str):
        return resolve_path(value, recipe_dir, where)
    return value


def _get(data: dict, dotted: str):
    node: Any = data
    for k in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(k)
    return node


# ----------------------------------------------------------------------------- overrides


def apply_recipe_overrides(data: dict, overrides: list[str], where: str) -> dict:
    """`--set` for recipes: `STAGE.key=v` (a stage by name), `*.key=v` (every stage whose config has
    the key), `eval.limit=20` / `base_model=...` / `launch.num_processes=8` (recipe keys)."""
    out = copy.deepcopy(data)
    stages = out.get("stages")
    stages = stages if isinstance(stages, list) and all(isinstance(s, dict) for s in stages) else []
    names = [s.get("name") for s in stages]
    for item in overrides or []:
        keys, value = parse_override(item)
        head = keys[0]
        if head == "*" and len(keys) > 1:
            classes = stage_classes()
            hit = False
            for st in stages:
                cls = classes.get(st.get("type"))
                fields = {f.name for f in dataclasses.fields(cls)} if cls else set()
                if keys[1] in fields or keys[1] in RECIPE_STAGE_KEYS:
                    set_key(st, keys[1:], value)
                    hit = True
            if not hit:
                raise ConfigError(f"--set {item}: no stage has a key '{keys[1]}'")
        elif head in names and head not in RECIPE_KEYS:
            if len(keys) < 2:
                raise ConfigError(f"--set {item}: name a key of stage {head}, e.g. {head}.learning_rate=...")
            set_key(stages[names.index(head)], keys[1:], value)
        elif head in RECIPE_KEYS:
            set_key(out, keys, value)
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
        if name in RECIPE_KEYS or name in RESERVED_STAGE_NAMES:
            raise ConfigError(f"{w}.name: '{name}' is reserved; choose another stage name")
        if name in seen:
            raise ConfigError(f"{w}.name: stage name '{name}' is used twice")
        seen.add(name)
        if typ not in STAGE_TYPES:
            raise ConfigError(f"{where} stage {name}.type: {typ!r} is not one of {', '.join(STAGE_TYPES)}")


def _looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value)) and not value.startswith(".")


# ----------------------------------------------------------------------------- the plan


def _base_model(
    recipe: Recipe, output_dir: Path, recipe_dir: Path, where: str
) -> tuple[str, TinyBase | None]:
    if isinstance(recipe.base_model, dict):
        if set(recipe.base_model) != {"tiny"}:
            raise ConfigError(
                f"{where}.base_model: a mapping must be {{tiny: {{...}}}} (got keys "
                f"{', '.join(map(str, recipe.base_model))})"
            )
        tiny = from_dict(TinyBase, recipe.base_model["tiny"] or {}, f"{where}.base_model.tiny")
        return str(output_dir / "base"), tiny
    if not isinstance(recipe.base_model, str):
        raise ConfigError(f"{where}.base_model: expected a hub id, a local dir or {{tiny: {{...}}}}")
    base = recipe.base_model
    p = Path(base).expanduser()
    local = p if p.exists() else (recipe_dir / p if (recipe_dir / p).exists() else None)
    if local is not None:
        if not (local / "config.json").is_file():
            raise ConfigError(f"{where}.base_model: {base} has no config.json (not a Hugging Face model dir)")
        return str(local), None
    if not _looks_like_hub_id(base):
        raise ConfigError(f"{where}.base_model: {base} is neither a local model dir nor a hub id (org/name)")
    return base, None


def _launch(recipe: Recipe, typ: str, num_processes, nodes, sw: str) -> tuple[int, int]:
    """(processes, nodes) of one stage. SFT/DPO default to the recipe's `launch`; an RLVR learner spans
    processes (and nodes) only when its stage says so: its GPUs are shared with the vLLM engines."""
    if typ == "rlvr":
        n_proc, n_nodes = num_processes or 1, nodes or 1
    else:
        n_proc = recipe.launch.num_processes if num_processes is None else num_processes
        n_nodes = recipe.launch.nodes if nodes is None else nodes
    if not isinstance(n_proc, int) or not isinstance(n_nodes, int) or n_proc < 1 or n_nodes < 1:
        raise ConfigError(f"{sw}: num_processes and nodes must be integers >= 1")
    if n_proc % n_nodes:
        raise ConfigError(f"{sw}.num_processes: {n_proc} processes do not split evenly over {n_nodes} nodes")
    return n_proc, n_nodes


def load_plan(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    output: str | None = None,
    scratch: Path | None = None,
) -> Plan:
    """Loads and validates the whole recipe (nothing heavy, nothing written except inline mixes into
    `scratch` or the output dir). `recipe_path` is a file or a shipped recipe's name. Raises a one-line
    UserError on the first problem."""
    from ..shipped import find_recipe

    recipe_path = find_recipe(str(recipe_path))
    raw = load_yaml(recipe_path)
    where = str(recipe_path)
    if "stages" in raw:
        _check_stage_entries(raw["stages"], where)
    raw = apply_recipe_overrides(raw, overrides or [], where)
    if "stages" in raw:
        _check_stage_entries(raw["stages"], where)
    recipe = from_dict(Recipe, raw, where)
    recipe_dir = recipe_path.parent
    out_str = output or recipe.output_dir
    if not out_str:
        raise ConfigError(f"{where}: no output_dir in the recipe; pass --output DIR")
    output_dir = Path(out_str)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{where}: the output dir {output_dir} is a file; pass --output DIR")
    mix_dir = scratch if scratch is not None else output_dir / "mixes"
    base, tiny = _base_model(recipe, output_dir, recipe_dir, where)

    # held-out eval
    ev = recipe.eval
    eval_mix, eval_label = None, ""
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
            eval_mix = eval_label = resolve_path(ev.dataset_mix, recipe_dir, f"{ew}.dataset_mix")
        else:
            raise ConfigError(f"{ew}.dataset_mix: expected a path or an inline mix mapping")
        ev.reward_modules = [
            resolve_reward_spec(s, recipe_dir, f"{ew}.reward_modules[{i}]")
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
            raise ConfigError(f"{where}.defaults.{key}: set by the recipe runner; remove it")

    stages: list[StagePlan] = []
    parent_path, parent_name = base, "base"
    for i, entry in enumerate(recipe.stages):
        entry = copy.deepcopy(entry)
        name, typ = entry.pop("name"), entry.pop("type")
        st = STAGE_TYPES[typ]
        sw = f"{where} stage {name}"
        for key in CHAINED_KEYS:
            if key in entry:
                raise ConfigError(
                    f"{sw}.{key}: set by the recipe runner (previous stage's output / <output>/{name}); remove it"
                )
        num_processes, nodes = entry.pop("num_processes", None), entry.pop("nodes", None)
        cls = classes[typ]
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: copy.deepcopy(v) for k, v in recipe.defaults.items() if k in fields}
        data.update(entry)
        # data paths: inline mixes become files, relative paths are resolved (resolve_path's order)
        mixes = {}
        for dotted, (role, _kind) in st.mix_fields().items():
            value = _get(data, dotted)
            if value in (None, ""):
                continue
            keys = dotted.split(".")
            resolved = resolve_mix(value, mix_dir / f"{name}_{role}.yaml", recipe_dir, f"{sw}.{dotted}")
            set_key(data, keys, resolved)
            mixes[role] = resolved
        if isinstance(data.get("deepspeed"), str) and data["deepspeed"] not in ("zero2", "zero3"):
            data["deepspeed"] = resolve_path(
                data["deepspeed"], recipe_dir, f"{sw}.deepspeed", "DeepSpeed config"
            )
        for dotted in ("reward_modules", "policy_pairs.reward_modules"):
            specs = _get(data, dotted)
            if isinstance(specs, list):
                set_key(
                    data,
                    dotted.split("."),
                    [resolve_reward_spec(s, recipe_dir, f"{sw}.{dotted}[{j}]") for j, s in enumerate(specs)],
                )
        data["model_name_or_path"] = parent_path
        data["output_dir"] = str(output_dir / name)
        cfg = from_dict(cls, data, sw)  # unknown keys, types, the stage's own validate()

        n_proc, n_nodes = _launch(recipe, typ, num_processes, nodes, sw)
        if typ == "rlvr":
            cfg.engine_config(n_proc, where=sw)  # the mini-batch splits evenly over the learner processes
        else:
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
        check_stage_data(sp)
        stages.append(sp)
        parent_path, parent_name = str(output_dir / name), name

    if ev is not None:
        check_eval_data(eval_mix, ev, f"{where} eval")
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
