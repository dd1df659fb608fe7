"""Loading users' own rewards from a file or module named in a recipe or on the command line.

Spec forms:

* ``path/to/my_rewards.py:fn``  a function (or class, instantiated with no arguments) in a file
* ``pkg.module:fn``             the same from an importable module
* ``path/to/my_rewards.py`` / ``pkg.module``  import only; the file registers its rewards itself with
  ``@reward_fns.register(...)``

Nothing in the package has to be edited. A worker process re-loads the same spec, so the registry
records it as the reward's ``origin``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from types import ModuleType

from . import registry
from .errors import RewardError, UnknownRewardError

_USER_PACKAGE = "reward_fns._user"
# Names each user module registered through its own @register decorators when it was imported.
_REGISTERED_BY_MODULE: dict[str, list[str]] = {}


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"a/b.py:fn"`` -> ("a/b.py", "fn"); ``"pkg.mod"`` -> ("pkg.mod", None)."""
    spec = str(spec).strip()
    if not spec:
        raise UnknownRewardError(
            "empty reward spec; expected path/to/file.py:function or package.module:function"
        )
    target, sep, attr = spec.rpartition(":")
    if not sep:
        return spec, None
    if not target:
        raise UnknownRewardError(f"reward spec {spec!r} has no file or module before ':'")
    if not attr.isidentifier():
        raise UnknownRewardError(f"reward spec {spec!r}: {attr!r} is not a Python name")
    return target, attr


def _import_file(path: str) -> ModuleType:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise UnknownRewardError(f"reward module file {path!r} not found")
    # A stable, unique module name per file: loading the same file twice reuses the module, and two
    # files both called my_rewards.py do not clash.
    stem = os.path.splitext(os.path.basename(full))[0]
    digest = hashlib.sha1(full.encode()).hexdigest()[:10]
    mod_name = f"{_USER_PACKAGE}.{''.join(c if c.isalnum() else '_' for c in stem)}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, full)
    if spec is None or spec.loader is None:
        raise UnknownRewardError(f"reward module file {path!r} cannot be imported (not a Python file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    # The user's file may import helpers sitting next to it.
    folder = os.path.dirname(full)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise RewardError(
            f"reward module {path!r} failed to import: {type(e).__name__}: {_one_line(e)}"
        ) from e
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise UnknownRewardError(f"reward module {name!r} not found") from e
        raise RewardError(
            f"reward module {name!r} failed to import: {type(e).__name__}: {_one_line(e)}"
        ) from e
    except Exception as e:
        raise RewardError(
            f"reward module {name!r} failed to import: {type(e).__name__}: {_one_line(e)}"
        ) from e


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def load_user_rewards(spec: str, name: str | None = None) -> list[str]:
    """Import a user reward and register it; returns the registered name(s).

    With ``:fn`` the function is registered under ``name`` (default: the function's name as written in
    the spec). Without ``:fn`` the module is imported for its ``@register`` decorators and ``name`` must
    be None. A missing file, module or attribute raises a one-line :class:`UnknownRewardError`.
    """
    target, attr = split_spec(spec)
    is_file = _is_file_spec(target)
    origin_target = os.path.abspath(os.path.expanduser(target)) if is_file else target
    before = {k: s.fn for k, s in registry._REGISTRY.items()}
    module = _import_file(target) if is_file else _import_module(target)
    changed = [k for k, s in registry._REGISTRY.items() if before.get(k) is not s.fn]
    # Whatever the module registered itself comes back with it when a worker re-imports the module.
    for key in changed:
        registry._REGISTRY[key] = dataclasses.replace(registry._REGISTRY[key], origin=origin_target)
    if changed:
        _REGISTERED_BY_MODULE[origin_target] = changed
    else:
        # Imported before (e.g. through another spec naming the same file): same registrations.
        changed = list(_REGISTERED_BY_MODULE.get(origin_target, []))
    if attr is None:
        if name is not None:
            raise UnknownRewardError(
                f"reward spec {spec!r} names no function, so it cannot be registered as {name!r}"
            )
        if not changed:
            raise UnknownRewardError(
                f"reward module {target!r} registered no rewards; name a function: {target}:function_name"
            )
        return changed
    if not hasattr(module, attr):
        raise UnknownRewardError(f"reward module {target!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    fn = obj() if inspect.isclass(obj) else obj
    if not callable(fn):
        raise UnknownRewardError(f"{target}:{attr} is not callable")
    reg_name = name or attr
    try:
        registry.add_reward(reg_name, fn, origin=f"{origin_target}:{attr}")
    except (TypeError, RewardError) as e:  # a bad signature or label declaration, named by its spec
        raise RewardError(f"{target}:{attr}: {e}") from e
    return sorted(set(changed) | {registry.canonical_name(reg_name)})


def parse_extra(spec: str) -> tuple[str | None, str]:
    """``"name=path.py:fn"`` -> ("name", "path.py:fn"); a plain spec has no name."""
    head, sep, rest = str(spec).partition("=")
    if sep and head.strip().isidentifier():
        return head.strip(), rest.strip()
    return None, str(spec).strip()


def load_extra(spec: str) -> list[str]:
    """Load one recipe/CLI entry: a spec, optionally prefixed by ``name=``."""
    name, target = parse_extra(spec)
    return load_user_rewards(target, name)
