"""The reward registry: name -> reward function, and how each function is called.

A reward is any callable registered under a name. Two calling conventions are supported and told
apart by the function's signature, once, at registration:

* per-sample (this package's own): ``fn(completion, ground_truth, prompt=None, token_ids=None)``
  returning a float or a :class:`RewardResult`. ``prompt`` / ``token_ids`` are only passed when the
  function accepts them (by name or through ``**kwargs``), so ``def f(completion, ground_truth)`` works.
* batch (TRL ``GRPOTrainer`` style): any signature with a parameter called ``completions``, e.g.
  ``def f(completions, prompts=None, ground_truth=None, **kwargs) -> list[float | None]``. It receives
  lists (one entry per sample) of the completions and of the dataset columns, exactly as TRL passes
  them, so a reward written for TRL works unchanged.

The verifier for a data row is chosen by its ``dataset`` column, case-insensitively (``MATH`` ==
``math``), which is why names are stored lower-cased.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UnknownRewardError
from .labels import run_checker, user_declaration

log = logging.getLogger(__name__)


@dataclass
class RewardResult:
    """A score plus free-form metadata (e.g. the extracted answer), kept per sample by the runner."""

    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardSpec:
    """One registered reward and everything the runner needs to call it.

    in_process: the runner may call it in the calling process. Only for built-ins that are pure string
        processing with linear-time regexes (they cannot hang); everything else runs in worker processes
        that can be killed.
    fast_path: optional cheap in-process pre-check (same arguments as a per-sample call) that returns a
        score when it can decide, or None to defer to the full function in a worker (``math`` settles
        most answers by string normalisation and only sends the rest to the symbolic checker).
    warmup: optional no-argument callable a worker runs once at start-up (imports, caches), so that
        slow first-call set-up does not count against the first sample's timeout.
    timeout_s: the time this reward needs per sample, when it is more than the runner's default
        (``code`` runs a sandbox with its own wall-time limit).
    label_types: what labels (``ground_truth``) it accepts, in words (messages, ``rewards list``); None
        when a user reward declares nothing (then any label is accepted).
    check_label: ``check_label(ground_truth)`` -> None when the verifier can use the label, else a
        short reason (see ``labels.run_checker`` for the forms a user's checker may return).
    origin: "builtin", or the user spec (``file.py:fn`` / ``pkg.mod:fn`` / ``file.py``) that a worker
        process loads to get the same function; None when it was registered from code a worker cannot
        re-import (then it runs in-process, see ``RewardRunner``).
    """

    name: str
    fn: Callable[..., Any]
    description: str
    batched: bool
    passes: frozenset[str]
    in_process: bool = False
    fast_path: Callable[..., Any] | None = None
    warmup: Callable[[], Any] | None = None
    timeout_s: float | None = None
    origin: str | None = None
    label_types: str | None = None
    check_label: Callable[[Any], Any] | None = None

    def label_problem(self, ground_truth: Any) -> str | None:
        """None when this reward can use ``ground_truth``, else a one-line reason (no location)."""
        if self.check_label is None:
            return None
        return run_checker(self.check_label, ground_truth, self.label_types)

    def call_one(
        self,
        completion: str,
        ground_truth: Any,
        prompt: str | None = None,
        token_ids: list[int] | None = None,
    ) -> Any:
        """Score one sample whatever the calling convention; returns the raw value (not validated)."""
        if self.batched:
            values = self.call_batch([completion], [ground_truth], [prompt], [token_ids], [self.name])
            return values[0]
        kwargs: dict[str, Any] = {}
        if "prompt" in self.passes:
            kwargs["prompt"] = prompt
        if "token_ids" in self.passes:
            kwargs["token_ids"] = token_ids
        return self.fn(completion, ground_truth, **kwargs)

    def call_batch(
        self,
        completions: list[str],
        ground_truths: list[Any],
        prompts: list[str | None],
        token_ids: list[list[int] | None],
        datasets: list[str],
    ) -> list[Any]:
        """Score several samples; returns one raw value per sample (raises if the count is wrong)."""
        if not self.batched:
            return [
                self.call_one(c, g, p, t)
                for c, g, p, t in zip(completions, ground_truths, prompts, token_ids)
            ]
        # TRL passes dataset columns by their column names, plus `prompts` and `completion_ids`.
        columns = {
            "prompts": prompts,
            "ground_truth": ground_truths,
            "dataset": datasets,
            "completion_ids": token_ids,
        }
        kwargs = {k: v for k, v in columns.items() if k in self.passes}
        values = self.fn(completions=completions, **kwargs)
        if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(f"batch reward returned {type(values).__name__}, expected a list of floats")
        values = list(values)
        if len(values) != len(completions):
            raise ValueError(f"batch reward returned {len(values)} scores for {len(completions)} completions")
        return values


_REGISTRY: dict[str, RewardSpec] = {}

_PER_SAMPLE_OPTIONAL = ("prompt", "token_ids")
_BATCH_COLUMNS = ("prompts", "ground_truth", "dataset", "completion_ids")


def canonical_name(name: str) -> str:
    """Registry key for a name: rows say ``MATH`` or ``math``; both pick the same verifier."""
    return str(name).strip().lower()


def describe_signature(fn: Callable[..., Any]) -> tuple[bool, frozenset[str]]:
    """(batched, keyword arguments to pass) read from the signature; see the module docstring."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        # Builtins/C callables without a signature: assume the plain per-sample form.
        return False, frozenset()
    params = sig.parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    batched = "completions" in params
    wanted = _BATCH_COLUMNS if batched else _PER_SAMPLE_OPTIONAL
    passes = frozenset(n for n in wanted if var_kw or n in params)
    if not batched:
        positional = [
            p
            for p in params.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        has_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
        if len(positional) < 2 and not has_varargs:
            raise TypeError(
                f"reward {getattr(fn, '__name__', fn)!r} must take (completion, ground_truth, ...) "
                "or be a TRL-style batch function with a `completions` parameter"
            )
    return batched, passes


def add_reward(
    name: str,
    fn: Callable[..., Any],
    description: str | None = None,
    *,
    in_process: bool = False,
    fast_path: Callable[..., Any] | None = None,
    warmup: Callable[[], Any] | None = None,
    timeout_s: float | None = None,
    origin: str | None = None,
    label_types: Any = None,
    check_label: Callable[[Any], Any] | None = None,
) -> RewardSpec:
    """Register ``fn`` under ``name`` (the non-decorator form of :func:`register`).

    ``label_types``/``check_label`` default to the function's attributes of the same names; see
    ``labels.user_declaration``. A reward that declares neither accepts any label."""
    key = canonical_name(name)
    if not key:
        raise UnknownRewardError("reward name must not be empty")
    batched, passes = describe_signature(fn)
    label_text, checker = user_declaration(key, fn, label_types, check_label)
    if description is None:
        doc = inspect.getdoc(fn) or ""
        description = doc.strip().splitlines()[0] if doc.strip() else ""
    if origin is None:
        origin = _guess_origin(fn)
    spec = RewardSpec(
        name=key,
        fn=fn,
        description=description,
        batched=batched,
        passes=passes,
        in_process=in_process,
        fast_path=fast_path,
        warmup=warmup,
        timeout_s=timeout_s,
        origin=origin,
        label_types=label_text,
        check_label=checker,
    )
    old = _REGISTRY.get(key)
    if (
        old is not None
        and old.fn is not fn
        and getattr(old.fn, "__qualname__", None) != getattr(fn, "__qualname__", None)
    ):
        log.info("reward %r re-registered (%s replaces %s)", key, _fn_label(fn), _fn_label(old.fn))
    _REGISTRY[key] = spec
    return spec


def register(
    name: str,
    description: str | None = None,
    *,
    in_process: bool = False,
    fast_path: Callable[..., Any] | None = None,
    warmup: Callable[[], Any] | None = None,
    timeout_s: float | None = None,
    label_types: Any = None,
    check_label: Callable[[Any], Any] | None = None,
):
    """Decorator: ``@register("gsm8k", description="...")`` registers a function or class instance.

    A decorated class is instantiated once with no arguments (its ``__call__`` is the reward).
    The description defaults to the first line of the docstring. ``in_process``/``fast_path``/``warmup``/
    ``timeout_s`` are mostly for built-ins; see :class:`RewardSpec`. ``label_types``/``check_label``
    declare the accepted labels (as the function attributes of the same names would).
    """

    def decorate(obj):
        fn = obj() if inspect.isclass(obj) else obj
        add_reward(
            name,
            fn,
            description,
            in_process=in_process,
            fast_path=fast_path,
            warmup=warmup,
            timeout_s=timeout_s,
            label_types=label_types,
            check_label=check_label,
        )
        return obj

    return decorate


def get_spec(name: str) -> RewardSpec:
    """The :class:`RewardSpec` registered under ``name`` (case-insensitive) or UnknownRewardError."""
    spec = _REGISTRY.get(canonical_name(name))
    if spec is None:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownRewardError(f"unknown reward {str(name)!r}; known rewards: {known}")
    return spec


def get_reward(name: str) -> Callable[..., Any]:
    """The function registered under ``name`` (case-insensitive); UnknownRewardError lists known names."""
    return get_spec(name).fn


def label_problem(name: str, ground_truth: Any) -> str | None:
    """None when the reward registered as ``name`` (case-insensitive) can use ``ground_truth``, else a
    short one-line reason such as "expected a number, got a dict" (no file/line: callers add those).
    An unknown name raises UnknownRewardError; a user reward that declares no labels accepts any."""
    return get_spec(name).label_problem(ground_truth)


def list_rewards() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered reward, sorted by name."""
    return [(k, _REGISTRY[k].description) for k in sorted(_REGISTRY)]


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def _fn_label(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _guess_origin(fn: Callable[..., Any]) -> str | None:
    """Where a worker process can find ``fn`` again: ``pkg.mod:qualname`` for importable module-level
    functions, ``/abs/file.py:qualname`` for functions defined in a script run as ``__main__``, else
    None (lambdas, closures, interactive sessions)."""
    target = fn if (inspect.isfunction(fn) or inspect.ismethod(fn)) else type(fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", "")
    if not module or not qualname or "<" in qualname or "." in qualname:
        return None
    if module.startswith("reward_fns.") and not module.startswith("reward_fns._user"):
        return "builtin"
    if module.startswith("reward_fns._user"):
        return None  # set explicitly by load_user_rewards
    if module == "__main__":
        import sys

        path = getattr(sys.modules.get("__main__"), "__file__", None)
        return f"{path}:{qualname}" if path else None
    return f"{module}:{qualname}"
