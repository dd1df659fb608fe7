"""Reading ``ifeval`` labels: the Tülu 3 ``func_name`` form and the IFEval ``instruction_id`` form.

Accepted (as a dict or as its JSON / Python-repr string):

* ``{"func_name": "validate_end", "end_phrase": "...", "N": null, ...}``  one Tülu 3 constraint
* ``{"instruction_id": ["punctuation:no_comma", ...], "kwargs": [{...}, ...]}``  IFEval, one kwargs
  object per id (``kwargs`` may be missing for ids that take none)
* a list holding any of the above (their constraints are pooled)

Null-valued arguments are dropped. The result is cached per label string because GRPO scores many
completions against the same label.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
from dataclasses import dataclass
from typing import Any

from .instructions import INSTRUCTIONS
from .tulu_functions import FUNCTIONS


@dataclass(frozen=True)
class Constraint:
    name: str  # a Tülu func_name or an IFEval instruction id
    check: Any  # the check function
    kwargs: tuple[tuple[str, Any], ...]


_PARAMS = {
    fn: tuple(inspect.signature(fn).parameters)[1:] for fn in (*INSTRUCTIONS.values(), *FUNCTIONS.values())
}


def _decode(text: str):
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"ifeval label is neither JSON nor a Python literal: {text[:80]!r}") from None


def _clean_kwargs(fn, raw: dict | None, where: str) -> tuple[tuple[str, Any], ...]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: kwargs must be an object, got {type(raw).__name__}")
    wanted = _PARAMS[fn]
    # Keys that do not apply (null, or not an argument of this check) are ignored, as in the data.
    return tuple((k, v) for k, v in raw.items() if v is not None and k in wanted)


def _constraints(obj) -> list[Constraint]:
    if isinstance(obj, str):
        return _constraints(_decode(obj))
    if isinstance(obj, (list, tuple)):
        out: list[Constraint] = []
        for item in obj:
            out.extend(_constraints(item))
        return out
    if not isinstance(obj, dict):
        raise ValueError(f"ifeval label must be an object or a list of objects, got {type(obj).__name__}")
    if "func_name" in obj:
        name = str(obj["func_name"])
        fn = FUNCTIONS.get(name)
        if fn is None:
            raise ValueError(f"unknown Tülu IF function {name!r}")
        args = {k: v for k, v in obj.items() if k != "func_name"}
        return [Constraint(name, fn, _clean_kwargs(fn, args, name))]
    if "instruction_id" in obj:
        ids = obj["instruction_id"]
        ids = [ids] if isinstance(ids, str) else list(ids)
        kwargs_list = obj.get("kwargs")
        if kwargs_list is None:
            kwargs_list = [{}] * len(ids)
        elif isinstance(kwargs_list, dict):
            kwargs_list = [kwargs_list]
        if len(kwargs_list) != len(ids):
            raise ValueError(
                f"ifeval label has {len(ids)} instruction ids but {len(kwargs_list)} kwargs objects"
            )
        out = []
        for iid, kw in zip(ids, kwargs_list):
            fn = INSTRUCTIONS.get(str(iid))
            if fn is None:
                raise ValueError(f"unknown IFEval instruction id {iid!r}")
            out.append(Constraint(str(iid), fn, _clean_kwargs(fn, kw, str(iid))))
        return out
    raise ValueError("ifeval label has neither 'func_name' nor 'instruction_id'")


@functools.lru_cache(maxsize=4096)
def _constraints_cached(text: str) -> tuple[Constraint, ...]:
    return tuple(_constraints(text))


def parse_if_label(label) -> tuple[Constraint, ...]:
    found = _constraints_cached(label) if isinstance(label, str) else tuple(_constraints(label))
    if not found:
        raise ValueError("ifeval label holds no constraints")
    return found


def prompt_params(fn) -> tuple[str, ...]:
    """Arguments that default to the row's prompt when the label leaves them out."""
    return tuple(p for p in _PARAMS[fn] if p in ("original_prompt", "prompt_to_repeat"))


def params(fn) -> tuple[str, ...]:
    return _PARAMS[fn]
