"""Typed, strict configs: dataclasses filled from YAML dicts plus `--set key=value` overrides.

Every stage config is a dataclass. `from_dict` refuses unknown keys (suggesting the closest
known one) and values of the wrong type, naming the key, so a typo fails in milliseconds
instead of after the cluster has started.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} line {line}: not valid UTF-8 (byte {e.object[e.start]:#04x}); save the file as UTF-8"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of key: value")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_key(data: dict, keys: list[str], value: Any) -> None:
    """`data[k0][k1]...[kn] = value`, creating (or replacing non-mapping) intermediate levels."""
    node = data
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Returns a copy of `data` with each `key.sub=value` applied (creating nested dicts)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        set_key(out, keys, value)
    return out


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks (and gently converts: int -> float, '1e-5' -> float) `value` against `tp`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str):
            lowered = {str(c).lower(): c for c in choices}
            if value.lower() in lowered:
                return lowered[value.lower()]
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads `5e-7` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Builds dataclass `cls` from `data`, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{name}'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-able data (for lineage and resolved configs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


RUN_ROOT = "<run>"


def relative_to_run(data: Any, root: str | Path) -> Any:
    """`data` (plain config data) with every path inside `root` written as `<run>/...`, so a run
    directory that was moved or copied compares equal to itself (a config records its own paths)."""
    root = os.path.normpath(str(root))
    if isinstance(data, dict):
        return {k: relative_to_run(v, root) for k, v in data.items()}
    if isinstance(data, list):
        return [relative_to_run(v, root) for v in data]
    if isinstance(data, str) and data:
        norm = os.path.normpath(data)
        if norm == root:
            return RUN_ROOT
        if norm.startswith(root + os.sep):
            return RUN_ROOT + norm[len(root) :]
    return data


def load_config(
    cls: type[T],
    path: str | Path | None,
    overrides: list[str] | None = None,
    base: dict | None = None,
    on_top: dict | None = None,
    where: str = "config",
) -> T:
    """`base` defaults < YAML file (optional) < `on_top` (a command's short flags) < `--set` overrides
    -> validated `cls`."""
    data = dict(base or {})
    if path is not None:
        data.update(load_yaml(path))
        where = str(path)
    data.update(on_top or {})
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, where)


# Config keys that do not change what a stage trains: a rerun that differs only in these is the same run.
NON_SEMANTIC_KEYS = frozenset(
    {
        "logging_steps",
        "checkpointing_steps",
        "keep_last_checkpoints",
        "wandb_project",
        "wandb_run_name",
        "preprocessing_num_workers",
        "reward_workers",
        "push_to_hub",  # sharing a finished model is no reason to train it again
        "hub_model_id",
        "hub_private_repo",
        "hub_revision",
        "dist_timeout_s",
    }
)


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))  # JSON round trip: tuples, Paths, floats alike


def config_diff(old: dict, new: dict, cls: type | None = None, root: str | Path | None = None) -> list[str]:
    """The one "same config" rule (a finished stage is reused, an interrupted one resumed, only when
    this is empty): the top-level keys whose values differ, ignoring NON_SEMANTIC_KEYS. Paths inside
    `root` (the run directory each side was written in) compare relative to it, so a moved or copied
    run is the same run. A key the old record lacks counts as equal when the new value is `cls`'s
    default: a config field added to the toolkit later must not invalidate every finished run."""
    a, b = _plain(old), _plain(new)
    if root is not None:
        a = relative_to_run(a, root(old) if callable(root) else root)
        b = relative_to_run(b, root(new) if callable(root) else root)
    defaults = {}
    for f in dataclasses.fields(cls) if cls is not None else ():
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = _plain(to_dict(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = _plain(to_dict(f.default_factory()))
    diff = []
    for k in sorted((set(a) | set(b)) - NON_SEMANTIC_KEYS):
        if k not in a and k in defaults and b.get(k) == defaults[k]:
            continue
        if a.get(k) != b.get(k):
            diff.append(k)
    return diff


def describe_diff(old: dict, new: dict, keys: list[str]) -> str:
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]]
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return "; ".join(parts) + more


def field_docs(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, comment) of every field of config dataclass `cls` (inherited ones
    included), the comment being the `# ...` on the field's line in the source: `--help` is generated
    from the dataclasses, so it cannot drift from them."""
    import inspect
    import io
    import tokenize

    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        pending: str | None = None  # a field whose value spans lines: its comment may follow later
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.line[4:].startswith(tok.string + ":"):
                pending = tok.string
            elif tok.type == tokenize.COMMENT and pending is not None:
                text = tok.string.lstrip("#").strip()
                if text and not text.startswith("noqa"):
                    comments[pending] = text
                    pending = None
            elif tok.type == tokenize.NEWLINE:
                pending = None
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            default = "{...}" if dataclasses.is_dataclass(value) else repr(value)
        else:
            default = "(required)"
        out.append((f.name, _type_name(hints[f.name]), default, comments.get(f.name, "")))
    return out
