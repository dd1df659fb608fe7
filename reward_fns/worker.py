"""A reward worker process: loads the rewards it is told about, then scores chunks of samples.

Started by ``RewardRunner`` as ``python -c "...; main(read_fd, write_fd)"`` (a fresh interpreter, like
multiprocessing's "spawn", but without re-importing the caller's ``__main__`` module, which breaks
inside Ray actors, notebooks and scripts without a main guard). Messages are pickled over two pipes
with ``multiprocessing.connection``:

    parent -> worker: {init} once, then ("score", name, items, as_batch) / ("warm", names) ..., ("stop",)
    worker -> parent: ("ready", load_errors) after init and after each warm-up, ("result", index,
                      Outcome) per sample

One result message per sample, sent as soon as the sample is scored, is what lets the parent time
each sample separately and, after killing a hung worker, know exactly which sample hung.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
from multiprocessing.connection import Connection


def _die_with_parent() -> None:
    # If the training process is SIGKILLed, its workers must not live on.
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _limit_memory(megabytes: int | None) -> None:
    if not megabytes:
        return
    import resource

    limit = int(megabytes) << 20
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        pass


def _load(user_origins: list[tuple[str, str]]) -> dict[str, str]:
    """Re-create the user rewards from their origins; returns {name: error} for those that failed."""
    from . import registry
    from .user_rewards import _import_file, _import_module, _is_file_spec, load_user_rewards, split_spec

    errors: dict[str, str] = {}
    imported: set[str] = set()
    for name, origin in user_origins:
        try:
            target, attr = split_spec(origin)
            if attr is None:
                if target not in imported:
                    (_import_file if _is_file_spec(target) else _import_module)(target)
                    imported.add(target)
                registry.get_spec(name)
            else:
                load_user_rewards(origin, name)
        except Exception as e:  # noqa: BLE001 - reported per sample by the parent
            errors[name] = f"could not load in worker: {type(e).__name__}: {e}"
    return errors


def _send(conn: Connection, index: int, outcome) -> None:
    try:
        conn.send(("result", index, outcome))
    except (pickle.PicklingError, TypeError, AttributeError):
        # Metadata that does not pickle is dropped, the score is kept.
        outcome.metadata = {"metadata_dropped": "not picklable"}
        conn.send(("result", index, outcome))


def serve(rconn: Connection, wconn: Connection) -> None:
    init = rconn.recv()
    for path in reversed(init.get("sys_path", [])):
        if path not in sys.path:
            sys.path.insert(0, path)
    _limit_memory(init.get("memory_limit_mb"))
    logging.basicConfig(level=logging.WARNING)
    from . import registry
    from .outcome import error_outcome, interpret

    def warm(names: list[str]) -> dict[str, str]:
        errors = {}
        for name in names:
            try:
                spec = registry.get_spec(name)
                if spec.warmup is not None:
                    spec.warmup()
            except Exception as e:  # noqa: BLE001
                errors[name] = f"warm-up failed: {type(e).__name__}: {e}"
        return errors

    load_errors = _load(init.get("user", []))
    for name, error in warm(init.get("warm", [])).items():
        load_errors.setdefault(name, error)
    wconn.send(("ready", load_errors))
    while True:
        try:
            msg = rconn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        if msg[0] == "warm":
            errors = warm(msg[1])
            load_errors.update(errors)
            wconn.send(("ready", errors))
            continue
        _, name, items, as_batch = msg
        if name in load_errors:
            for item in items:
                wconn.send(("result", item[0], error_outcome(RuntimeError(load_errors[name]))))
            continue
        spec = registry.get_spec(name)
        if spec.batched and as_batch:
            t0 = time.perf_counter()
            try:
                values = spec.call_batch(
                    [i[1] for i in items],
                    [i[2] for i in items],
                    [i[3] for i in items],
                    [i[4] for i in items],
                    [name] * len(items),
                )
                per = (time.perf_counter() - t0) / len(items)
                outcomes = [interpret(v, per) for v in values]
            except BaseException as e:  # noqa: BLE001
                outcomes = [error_outcome(e, time.perf_counter() - t0)] * len(items)
            for item, outcome in zip(items, outcomes):
                _send(wconn, item[0], outcome)
            continue
        for index, completion, ground_truth, prompt, token_ids in items:
            t0 = time.perf_counter()
            try:
                outcome = interpret(
                    spec.call_one(completion, ground_truth, prompt, token_ids), time.perf_counter() - t0
                )
            except BaseException as e:  # noqa: BLE001 - a reward's failure is that sample's 0
                outcome = error_outcome(e, time.perf_counter() - t0)
            _send(wconn, index, outcome)


def main(read_fd: int, write_fd: int) -> None:
    _die_with_parent()
    rconn = Connection(read_fd, writable=False)
    wconn = Connection(write_fd, readable=False)
    try:
        serve(rconn, wconn)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        # Skip interpreter teardown (user module atexit handlers, stuck threads): we are done.
        os._exit(0)
