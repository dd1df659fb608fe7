"""``RewardRunner``: score a batch with the right verifier per row, containing every failure.

Labels are checked first: a sample whose label its verifier does not accept (``label_problem``) is
not scored; it gets 0 with status ``label_error``, counted apart (``reward/<name>/label_errors``) and
logged, so a wrong-type label never passes for a plain 0. The rest of the batch is scored.

Guarantees, per sample: a reward that raises, runs past its time limit, returns a non-number (or
NaN/inf), or allocates past the memory limit scores 0 for that sample only; the failure is counted by
kind in the batch's per-verifier stats (``ScoreBatch.stats``/``metrics()``), the first message is kept,
and a verifier failing on most of a batch is logged loudly. The caller never sees the exception and is
never stalled longer than the time limit.

How: rewards that could hang (user rewards, ``math``'s symbolic step, ``code``) run in worker
processes (``reward_fns.worker``) under an address-space limit. Samples go out in chunks (one pipe
round trip per chunk, not per sample) and results stream back one per sample, so the parent times each
sample separately; when a sample passes its limit the worker is SIGKILLed, that sample scores 0 as a
timeout, a fresh worker is started and the rest of the chunk is sent again. A TRL-style batch
function gets a whole chunk per call; if that call hangs, each of its samples is retried alone so only
the hanging one gets the 0. Built-ins that are pure linear-time string processing (gsm8k,
string_match, f1, ifeval, max_length, and ``math``'s string fast path) run in the calling process.

Construction is cheap (workers start on first need) and ``close()`` (or ``with``) stops them; a
runner works the same in the training process and inside a Ray actor.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from . import registry
from .errors import RewardInputError, UnknownRewardError
from .outcome import ERROR, LABEL_ERROR, TIMEOUT, Outcome, error_outcome, interpret
from .stats import ScoreBatch, assemble
from .user_rewards import load_extra

log = logging.getLogger(__name__)

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class _Task:
    name: str
    items: list[tuple]  # (index, completion, ground_truth, prompt, token_ids)
    as_batch: bool
    timeout_s: float


@dataclass
class _Worker:
    proc: subprocess.Popen
    send_conn: Connection
    recv_conn: Connection
    state: str = "starting"  # starting | idle | busy
    task: _Task | None = None
    received: int = 0
    deadline: float = 0.0
    load_errors: dict[str, str] = field(default_factory=dict)
    warmed: set[str] = field(default_factory=set)


class RewardRunner:
    """Scores completions with the verifier named by each row's ``dataset``.

    timeout_s: per-sample time limit for rewards run in workers (a reward registered with a larger
        ``timeout_s``, like ``code``, gets that); ``timeouts`` overrides it per reward name.
    num_workers: worker processes (default: up to 2). 0 runs everything in the calling process: no
        timeouts or memory limit then (for debugging a reward), exceptions and junk still contained.
    extra_modules: user reward specs (``my_rewards.py:fn``, ``pkg.mod:fn``, ``my_rewards.py``, or
        ``name=spec`` to pick the name) loaded now, so a bad spec fails here, before any work.
    memory_limit_mb: address-space limit (RLIMIT_AS) of each worker.
    """

    def __init__(
        self,
        timeout_s: float = 10.0,
        num_workers: int | None = None,
        extra_modules: Sequence[str] = (),
        memory_limit_mb: int | None = 8192,
        timeouts: dict[str, float] | None = None,
        chunk_size: int = 32,
        startup_timeout_s: float = 60.0,
        warn_failure_fraction: float = 0.5,
    ):
        if timeout_s <= 0:
            raise RewardInputError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.num_workers = min(2, os.cpu_count() or 1) if num_workers is None else max(0, int(num_workers))
        self.memory_limit_mb = memory_limit_mb
        self.timeouts = {registry.canonical_name(k): float(v) for k, v in (timeouts or {}).items()}
        self.chunk_size = max(1, int(chunk_size))
        self.startup_timeout_s = float(startup_timeout_s)
        self.warn_failure_fraction = warn_failure_fraction
        for spec in extra_modules:
            load_extra(spec)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._warned_in_process: set[str] = set()
        self._used: set[str] = set()  # rewards sent to workers so far: what a new worker warms up
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)

    # ----------------------------------------------------------------------------------- public API
    def score(
        self,
        completions: Sequence[str],
        ground_truths: Sequence[Any],
        datasets: Sequence[str],
        prompts: Sequence[str | None] | None = None,
        token_ids: Sequence[list[int] | None] | None = None,
    ) -> ScoreBatch:
        n = len(completions)
        prompts = list(prompts) if prompts is not None else [None] * n
        token_ids = list(token_ids) if token_ids is not None else [None] * n
        for what, seq in (
            ("ground_truths", ground_truths),
            ("datasets", datasets),
            ("prompts", prompts),
            ("token_ids", token_ids),
        ):
            if len(seq) != n:
                raise RewardInputError(f"{what} has {len(seq)} entries for {n} completions")
        specs = self._resolve(datasets)
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardRunner is closed")
            outcomes: list[Outcome | None] = [None] * n
            contained: dict[str, list[tuple]] = {}
            label_checks: dict[tuple[str, str], str | None] = {}
            for i in range(n):
                spec = specs[i]
                problem = _label_problem(spec, ground_truths[i], label_checks)
                if problem is not None:
                    outcomes[i] = Outcome(
                        LABEL_ERROR, message=f"label not usable by {spec.name!r}: {problem}"
                    )
                    continue
                args = (completions[i], ground_truths[i], prompts[i], token_ids[i])
                if spec.in_process or self.num_workers == 0 or spec.origin is None:
                    if (
                        spec.origin is None
                        and not spec.in_process
                        and self.num_workers
                        and spec.name not in self._warned_in_process
                    ):
                        self._warned_in_process.add(spec.name)
                        log.warning(
                            "reward %r was registered from code a worker process cannot import "
                            "(a lambda, closure or interactive session); it runs in this process "
                            "WITHOUT a time or memory limit. Put it in a file and load it with "
                            "load_user_rewards / --reward-module to contain it.",
                            spec.name,
                        )
                    outcomes[i] = _call_here(spec, *args)
                    continue
                if spec.fast_path is not None:
                    decided = _fast_path(spec, *args)
                    if decided is not None:
                        outcomes[i] = decided
                        continue
                contained.setdefault(spec.name, []).append((i, *args))
            if contained:
                for index, outcome in self._run_contained(contained).items():
                    outcomes[index] = outcome
            batch = assemble(outcomes, specs)
        self._warn_failures(batch)
        return batch

    def close(self) -> None:
        """Stop the worker processes (idempotent). The runner cannot score afterwards."""
        with self._lock:
            self._closed = True
            _stop_workers(self._workers)

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- internals
    def _resolve(self, datasets: Sequence[str]) -> list[registry.RewardSpec]:
        cache: dict[str, registry.RewardSpec] = {}
        unknown: list[str] = []
        out = []
        for d in datasets:
            key = registry.canonical_name(d)
            if key not in cache:
                try:
                    cache[key] = registry.get_spec(key)
                except UnknownRewardError:
                    unknown.append(str(d))
                    continue
            out.append(cache.get(key))
        if unknown:
            names = ", ".join(sorted(set(unknown)))
            known = ", ".join(registry.registered_names())
            raise UnknownRewardError(f"no reward registered for dataset {names}; known rewards: {known}")
        return out

    def _timeout_for(self, spec: registry.RewardSpec) -> float:
        if spec.name in self.timeouts:
            return self.timeouts[spec.name]
        return max(self.timeout_s, spec.timeout_s or 0.0)

    def _make_tasks(self, contained: dict[str, list[tuple]]) -> deque[_Task]:
        tasks: deque[_Task] = deque()
        workers = max(1, self.num_workers)
        for name, items in contained.items():
            spec = registry.get_spec(name)
            # Chunks small enough that every worker gets some, large enough to amortise the pipe.
            size = max(1, min(self.chunk_size, -(-len(items) // workers)))
            for start in range(0, len(items), size):
                tasks.append(_Task(name, items[start : start + size], spec.batched, self._timeout_for(spec)))
        return tasks

    def _run_contained(self, contained: dict[str, list[tuple]]) -> dict[int, Outcome]:
        tasks = self._make_tasks(contained)
        self._used.update(contained)
        results: dict[int, Outcome] = {}
        self._workers[:] = [w for w in self._workers if w.proc.poll() is None]
        while len(self._workers) < min(self.num_workers, len(tasks)):
            self._workers.append(self._start_worker())
        start_failures = 0
        while tasks or any(w.state == "busy" for w in self._workers):
            for w in list(self._workers):
                if w.state == "idle" and tasks:
                    if w.proc.poll() is not None:  # died while idle: not the next sample's fault
                        self._replace(w)
                        continue
                    self._assign(w, tasks.popleft(), tasks)
            waiting = [w for w in self._workers if w.state in ("starting", "busy")]
            if not waiting:
                if tasks and not self._workers:
                    self._workers.append(self._start_worker())
                    continue
                break
            now = time.monotonic()
            ready = wait(
                [w.recv_conn for w in waiting], timeout=max(0.0, min(w.deadline for w in waiting) - now)
            )
            by_conn = {id(w.recv_conn): w for w in waiting}
            for conn in ready:
                w = by_conn[id(conn)]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    start_failures += self._on_death(w, tasks, results)
                    continue
                if msg[0] == "ready":
                    w.state = "idle"
                    w.load_errors.update(msg[1])
                    start_failures = 0
                elif msg[0] == "result":
                    results[msg[1]] = msg[2]
                    w.received += 1
                    w.deadline = time.monotonic() + w.task.timeout_s
                    if w.received >= len(w.task.items):
                        w.state, w.task = "idle", None
            now = time.monotonic()
            for w in list(self._workers):
                if w.state in ("starting", "busy") and now > w.deadline and w.proc.poll() is None:
                    start_failures += self._on_timeout(w, tasks, results)
            if start_failures >= 2:
                # Workers cannot even start (e.g. a user module that hangs or crashes on import):
                # fail the remaining samples loudly instead of retrying forever.
                message = "reward worker failed to start twice; see the log above"
                for task in tasks:
                    for item in task.items:
                        results[item[0]] = Outcome(ERROR, message=message)
                tasks.clear()
                for w in self._workers:
                    if w.state == "busy":
                        for item in w.task.items[w.received :]:
                            results.setdefault(item[0], Outcome(ERROR, message=message))
                _stop_workers(self._workers)
                break
        return results

    def _assign(self, w: _Worker, task: _Task, tasks: deque[_Task]) -> None:
        spec = registry._REGISTRY.get(task.name)
        if spec is not None and spec.warmup is not None and task.name not in w.warmed:
            # First use of this reward in this worker: warm it up (e.g. import sympy) under the start-up
            # deadline, so the slow first call is not charged to a sample's timeout.
            w.warmed.add(task.name)
            tasks.appendleft(task)
            w.state, w.deadline = "starting", time.monotonic() + self.startup_timeout_s
            try:
                w.send_conn.send(("warm", [task.name]))
            except (OSError, ValueError):
                pass
            return
        w.task, w.received, w.state = task, 0, "busy"
        # A batch call answers all at once, so it gets the whole chunk's time.
        w.deadline = time.monotonic() + task.timeout_s * (len(task.items) if task.as_batch else 1)
        try:
            w.send_conn.send(("score", task.name, task.items, task.as_batch))
        except (OSError, ValueError):
            # Died while idle; the wait loop notices the EOF and reschedules the task.
            pass

    def _replace(self, w: _Worker) -> None:
        _kill(w)
        i = self._workers.index(w)
        self._workers[i] = self._start_worker()

    def _requeue_rest(self, task: _Task, first: int, tasks: deque[_Task]) -> None:
        rest = task.items[first:]
        if not rest:
            return
        if task.as_batch:
            # Retry each sample alone, so only the culprit of a hung batch call scores 0.
            for item in reversed(rest):
                tasks.appendleft(_Task(task.name, [item], task.as_batch, task.timeout_s))
        else:
            tasks.appendleft(_Task(task.name, rest, task.as_batch, task.timeout_s))

    def _on_timeout(self, w: _Worker, tasks: deque[_Task], results: dict[int, Outcome]) -> int:
        if w.state == "starting":
            log.warning("reward worker did not start within %.0f s; restarting it", self.startup_timeout_s)
            self._replace(w)
            return 1
        task = w.task
        if task.as_batch and len(task.items) > 1:
            log.warning(
                "reward %r: a batch call on %d samples passed its time limit; retrying them one by one",
                task.name,
                len(task.items),
            )
            self._requeue_rest(task, w.received, tasks)
        else:
            item = task.items[w.received]
            results[item[0]] = Outcome(
                TIMEOUT,
                message=f"no result within {task.timeout_s:g} s; worker killed",
                seconds=task.timeout_s,
            )
            self._requeue_rest(task, w.received + 1, tasks)
        self._replace(w)
        return 0

    def _on_death(self, w: _Worker, tasks: deque[_Task], results: dict[int, Outcome]) -> int:
        code = w.proc.poll()
        if code is None:
            try:
                code = w.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        if code == -9:
            how += ", possibly out of memory"
        if w.state == "starting":
            log.warning("reward worker died while starting (%s)", how)
            self._replace(w)
            return 1
        task = w.task
        if task is not None and w.received < len(task.items):
            if task.as_batch and len(task.items) > 1:
                self._requeue_rest(task, w.received, tasks)
            else:
                item = task.items[w.received]
                results[item[0]] = Outcome(ERROR, message=f"worker process died while scoring ({how})")
                self._requeue_rest(task, w.received + 1, tasks)
        self._replace(w)
        return 0

    def _start_worker(self) -> _Worker:
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        code = (
            f"import sys; sys.path.insert(0, {json.dumps(_PACKAGE_PARENT)}); "
            f"from reward_fns.worker import main; main({child_r}, {child_w})"
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(child_r, child_w),
                close_fds=True,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(child_r)
            os.close(child_w)
        w = _Worker(proc, Connection(parent_w, readable=False), Connection(parent_r, writable=False))
        w.deadline = time.monotonic() + self.startup_timeout_s
        user = [
            (name, spec.origin)
            for name, spec in registry._REGISTRY.items()
            if spec.origin not in (None, "builtin")
        ]
        warm = [
            name
            for name in sorted(self._used)
            if name in registry._REGISTRY and registry._REGISTRY[name].warmup is not None
        ]
        w.send_conn.send(
            {
                "sys_path": [p for p in sys.path if p],
                "memory_limit_mb": self.memory_limit_mb,
                "user": user,
                "warm": warm,
            }
        )
        return w

    def _warn_failures(self, batch: ScoreBatch) -> None:
        for name, st in batch.stats.items():
            if st.label_errors:
                # Always worth a warning: a bad label is a data problem no amount of training fixes.
                log.warning(
                    "REWARD %r: %d OF %d LABELS ARE NOT USABLE; those samples score 0 (status label_error). "
                    "First: %s",
                    name,
                    st.label_errors,
                    st.count,
                    st.first_label_error,
                )
            failed = st.errors + st.timeouts + st.junk  # the reward's own failures
            if st.count >= 2 and failed > self.warn_failure_fraction * st.count:
                log.warning(
                    "REWARD %r FAILED ON %d OF %d SAMPLES (errors %d, timeouts %d, junk %d); they score 0. "
                    "First: %s",
                    name,
                    failed,
                    st.count,
                    st.errors,
                    st.timeouts,
                    st.junk,
                    st.first_error,
                )


def _label_problem(
    spec: registry.RewardSpec, label: Any, seen: dict[tuple[str, str], str | None]
) -> str | None:
    if spec.check_label is None:
        return None
    if not isinstance(label, str):
        return spec.label_problem(label)
    # GRPO scores several completions per label: check each distinct string label once per batch.
    key = (spec.name, label)
    if key not in seen:
        seen[key] = spec.label_problem(label)
    return seen[key]


def _call_here(spec: registry.RewardSpec, completion, ground_truth, prompt, token_ids) -> Outcome:
    t0 = time.perf_counter()
    try:
        return interpret(spec.call_one(completion, ground_truth, prompt, token_ids), time.perf_counter() - t0)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a reward's failure is that sample's 0
        return error_outcome(e, time.perf_counter() - t0)


def _fast_path(spec: registry.RewardSpec, completion, ground_truth, prompt, token_ids) -> Outcome | None:
    t0 = time.perf_counter()
    try:
        value = spec.fast_path(completion, ground_truth)
    except Exception:  # noqa: BLE001 - undecided: the full reward (in a worker) will report it
        return None
    if value is None:
        return None
    return interpret(value, time.perf_counter() - t0)


def _kill(w: _Worker) -> None:
    try:
        w.proc.kill()
    except OSError:
        pass
    try:
        w.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for conn in (w.send_conn, w.recv_conn):
        try:
            conn.close()
        except OSError:
            pass


def _stop_workers(workers: list[_Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            try:
                w.send_conn.send(("stop",))
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _kill(w)
    workers.clear()
