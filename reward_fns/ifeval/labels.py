"""Reading ``ifeval`` labels: the Tülu 3 ``func_name`` form and the IFEval ``instruction_id`` form.

Accepted (as a dict or as its JSON / Python-repr string):

* ``{"func_name": "validate_end", "end_phrase": "...", "N": null, ...}``  one Tülu 3 constraint
* ``{"instruction_id": ["punctuation:no_comma", ...], "kwargs": [{...}, ...]}``  IFEval, one kwargs
  object per id (``kwargs`` may be missing for ids that take none)
* a list holding any of the above (their constraints are pooled)

Null-valued arguments are dropped. The result is cached per label string because GRPO scores many
completions against the same label.

``label_reason`` is the check before scoring: the label parses, names known functions / ids, has
every argument the check needs (a prompt argument may come from the row's prompt instead), and its
arguments are usable (each check is run once on a probe text, so ``N: "many"`` or an unknown
quantifier is caught here instead of failing every sample).
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
from dataclasses import dataclass
from typing import Any

from ..labels import kind, one_line
from .instructions import INSTRUCTIONS
from .tulu_functions import FUNCTIONS

LABEL_TYPES = (
    'Tülu 3 {"func_name": ...} or IFEval {"instruction_id": [...], "kwargs": [...]} (or a list of them), '
    "as an object or its JSON/Python-repr string; known func names / instruction ids only"
)


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
        raise ValueError(
            "expected a {func_name, ...} or {instruction_id, kwargs} object (or a list of them), "
            f"got {kind(obj)}"
        )
    if "func_name" in obj:
        name = str(obj["func_name"])
        fn = FUNCTIONS.get(name)
        if fn is None:
            raise ValueError(f"unknown Tülu IF function {name!r}")
        args = {k: v for k, v in obj.items() if k != "func_name"}
        return [Constraint(name, fn, _clean_kwargs(fn, args, name))]
    if "instruction_id" in obj:
        ids = obj["instruction_id"]
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"instruction_id must be a list of ids, got {kind(ids)}")
        kwargs_list = obj.get("kwargs")
        if kwargs_list is None:
            kwargs_list = [{}] * len(ids)
        elif isinstance(kwargs_list, dict):
            kwargs_list = [kwargs_list]
        if not isinstance(kwargs_list, (list, tuple)):
            raise ValueError(f"kwargs must be a list of objects, got {kind(kwargs_list)}")
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


# These checks call langdetect (a slow first load); their one argument is checked by type instead.
_LANGUAGE_CHECKS = ("validate_response_language", "language:response_language")
_PROBE = "1"  # no letters: the case checks stop before langdetect, the others still read their args


def _check_constraint(c: Constraint) -> None:
    kwargs = dict(c.kwargs)
    from_prompt = prompt_params(c.check)
    missing = [p for p in params(c.check) if p not in kwargs and p not in from_prompt]
    if missing:
        raise ValueError(f"{c.name}: label is missing {', '.join(missing)}")
    if c.name in _LANGUAGE_CHECKS:
        language = kwargs.get("language")
        if not isinstance(language, str) or not language.strip():
            raise ValueError(f"{c.name}: language must be an ISO 639-1 code, got {kind(language)}")
        return
    for p in from_prompt:
        kwargs.setdefault(p, _PROBE)
    try:
        c.check(_PROBE, **kwargs)
    except Exception as e:  # noqa: BLE001 - an argument the check cannot use, whatever it raised
        raise ValueError(f"{c.name}: {one_line(str(e), 120) or type(e).__name__}") from None


def _reason(label) -> str | None:
    try:
        for c in parse_if_label(label):
            _check_constraint(c)
    except (ValueError, TypeError) as e:
        return one_line(str(e)) or type(e).__name__
    return None


@functools.lru_cache(maxsize=4096)
def _reason_cached(text: str) -> str | None:
    return _reason(text)


def label_reason(label) -> str | None:
    """None when ``ifeval`` can score against ``label``, else a one-line reason."""
    if isinstance(label, str):
        return _reason_cached(label)
    if not isinstance(label, (dict, list, tuple)):
        return (
            "expected a {func_name, ...} or {instruction_id, kwargs} object (or a list of them, or its "
            f"JSON string), got {kind(label)}"
        )
    return _reason(label)
