"""Runs a training command in a subprocess and SIGKILLs it at a chosen moment, then checks that
nothing on disk is partial: every sealed checkpoint verifies, and a published model verifies."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from open_instruct.train import checkpoint as ckpt


def launch(args: list[str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, OPEN_INSTRUCT_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    log = open(log_path, "ab")
    # its own session, so the kill takes its children (vLLM engine processes, workers) too
    return subprocess.Popen(
        [sys.executable, "-m", "open_instruct.cli", *args],
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            n = max(n, int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, ValueError):
            pass
    return n


def run_and_kill(
    args: list[str],
    out: Path,
    log_path: Path,
    *,
    at_step: int | None = None,
    during: str | None = None,
    jitter_s: float = 0.0,
    timeout_s: float = 300.0,
    rng: random.Random | None = None,
) -> str:
    """Starts the command and kills it when `at_step` steps are logged (+ a random jitter), or the
    moment a `during` glob (e.g. 'checkpoints/.tmp-step_*') appears under `out`. Returns what
    happened: 'killed' or 'finished' (it ended before the kill point)."""
    rng = rng or random.Random(0)
    proc = launch(args, log_path)
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                return "finished"
            if during and any(out.glob(during)):
                kill_group(proc)
                return "killed"
            if at_step is not None and steps_logged(out) >= at_step:
                time.sleep(rng.uniform(0, jitter_s))
                kill_group(proc)
                return "killed"
            time.sleep(0.002 if during else 0.02)
        raise TimeoutError(f"{args} did not reach the kill point in {timeout_s}s; see {log_path}")
    finally:
        if proc.poll() is None:
            kill_group(proc)


def run_to_end(args: list[str], log_path: Path, timeout_s: float = 600.0) -> None:
    proc = launch(args, log_path)
    try:
        code = proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert code == 0, f"{args} exited {code}; log tail:\n{log_path.read_text()[-3000:]}"


def assert_nothing_partial(out: Path) -> int:
    """Every sealed checkpoint and any published model verify; returns how many checkpoints."""
    steps = ckpt.list_steps(out / "checkpoints")
    for _step, path in steps:
        problem = ckpt.verify(path)
        assert problem is None, f"sealed checkpoint {path} is broken after a kill: {problem}"
    if (out / ckpt.MODEL_MANIFEST).exists():
        assert ckpt.verify_model(out) is not None, f"{out}: published model does not match its manifest"
    return len(steps)
