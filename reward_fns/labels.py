"""Label (``ground_truth``) checking shared by the verifiers: what a reward accepts, said in one line.

Every built-in declares the labels it accepts (``RewardSpec.label_types``, a human description) and a
checker (``RewardSpec.check_label``) that returns None for a usable label or a short reason. A label a
verifier cannot use must never quietly score 0 (or, worse, 1): callers check labels before training
(:func:`reward_fns.label_problem`), the CLI rejects them naming the file and line, and the runner
counts them as ``label_error``.

User rewards may declare theirs on the function (see ``user_checker``); an undeclared reward accepts
any label.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable
from typing import Any

from .errors import RewardError

_REASON_MAX = 200


def kind(value: Any) -> str:
    """``value``'s type for a message: "a dict", "an int", "None", "an empty string", "the string 'x'"."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, str):
        if not value.strip():
            return "an empty string"
        decoded = json_container(value)
        if decoded is not None:
            # Structured labels often travel as JSON text (open_instruct stores ground_truth as text).
            return "a JSON object" if isinstance(decoded, dict) else "a JSON list"
        text = value if len(value) <= 40 else value[:40] + "..."
        return f"the string {text!r}"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def json_container(text: str) -> dict | list | None:
    """The object or list a string holds as JSON text, else None (cheap for ordinary strings)."""
    stripped = text.strip()
    if not (stripped[:1] == "{" and stripped[-1:] == "}") and not (
        stripped[:1] == "[" and stripped[-1:] == "]"
    ):
        return None
    try:
        decoded = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, (dict, list)) else None


def is_number(value: Any) -> bool:
    """A real number that is not a boolean (numpy scalars included: labels often come via pandas)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def one_line(text: str, limit: int = _REASON_MAX) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def from_parser(parse: Callable[[Any], Any]) -> Callable[[Any], str | None]:
    """A checker from a verifier's own label parser: the label is usable when the parser accepts it,
    so the check cannot drift from what the verifier really does."""

    def check(label: Any) -> str | None:
        try:
            parse(label)
        except (ValueError, TypeError) as e:
            return one_line(str(e)) or type(e).__name__
        return None

    check.__name__ = f"check_{getattr(parse, '__name__', 'label')}"
    return check


def _type_names(types: tuple[type, ...]) -> str:
    names = [t.__name__ for t in types]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def types_checker(types: tuple[type, ...]) -> Callable[[Any], str | None]:
    """A checker for a user's ``label_types = (str, int)``: isinstance, with booleans refused unless
    ``bool`` is listed (``isinstance(True, int)`` holds, but a boolean is never meant as a number)."""
    allow_bool = bool in types
    names = _type_names(types)

    def check(label: Any) -> str | None:
        if isinstance(label, types) and (allow_bool or not isinstance(label, bool)):
            return None
        return f"expected {names}, got {kind(label)}"

    return check


def user_declaration(
    name: str, fn: Any, label_types: Any = None, check_label: Any = None
) -> tuple[str | None, Callable[[Any], Any] | None]:
    """(label_types text, checker) for a reward from explicit arguments or, failing those, the
    function's own ``label_types`` / ``check_label`` attributes. Nothing declared: (None, None), i.e.
    any label is accepted."""
    if label_types is None:
        label_types = getattr(fn, "label_types", None)
    if check_label is None:
        check_label = getattr(fn, "check_label", None)
    if check_label is not None and not callable(check_label):
        raise RewardError(f"reward {name!r}: check_label must be callable, got {kind(check_label)}")
    if isinstance(label_types, type):
        label_types = (label_types,)
    if isinstance(label_types, tuple) and label_types and all(isinstance(t, type) for t in label_types):
        text = _type_names(label_types)
        return text, check_label or types_checker(label_types)
    if label_types is not None and not isinstance(label_types, str):
        raise RewardError(
            f"reward {name!r}: label_types must be a type, a tuple of types or a description string, "
            f"got {kind(label_types)}"
        )
    if label_types is not None and check_label is None:
        # A description alone checks nothing; accepting every label while claiming otherwise would be
        # exactly the silent failure label checks exist to prevent.
        raise RewardError(
            f"reward {name!r}: label_types {label_types!r} is a description; also give check_label, "
            "or give label_types as Python types (e.g. (str, int))"
        )
    if check_label is not None and label_types is None:
        doc = (getattr(check_label, "__doc__", None) or "").strip()
        label_types = doc.splitlines()[0] if doc else "labels its check_label accepts"
    return label_types, check_label


def run_checker(check: Callable[[Any], Any], label: Any, label_types: str | None) -> str | None:
    """Call a checker and turn whatever it does into None (usable) or a one-line reason.

    A checker returns None or True for a usable label, a reason string or False otherwise; raising
    ValueError/TypeError also rejects the label (the message is the reason)."""
    try:
        verdict = check(label)
    except (ValueError, TypeError) as e:
        return one_line(str(e)) or f"rejected by check_label ({type(e).__name__})"
    except Exception as e:  # noqa: BLE001 - a broken checker must reject loudly, not crash the caller
        return one_line(f"check_label raised {type(e).__name__}: {e}")
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return f"expected {label_types or 'a label check_label accepts'}, got {kind(label)}"
    if isinstance(verdict, str):
        return one_line(verdict) or f"expected {label_types}, got {kind(label)}"
    return one_line(f"check_label returned {kind(verdict)}; expected None/True or a reason string")
