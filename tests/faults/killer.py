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

# Every process a run starts (Ray's GCS and raylet, Ray workers, vLLM engines) inherits this variable,
# so the ones that outlive a kill can be found in /proc.
RUN_TAG = "OPEN_INSTRUCT_FAULT_RUN"


def launch(args: list[str], log_path: Path, tag: str = "") -> subprocess.Popen:
    env = dict(os.environ, OPEN_INSTRUCT_NO_PROGRESS="1", PYTHONUNBUFFERED="1", **{RUN_TAG: tag})
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
    tag: str = "",
    alive_at_kill: list | None = None,
) -> str:
    """Starts the command and kills it when `at_step` steps are logged (+ a random jitter), or the
    moment a `during` glob (e.g. 'checkpoints/.tmp-step_*') appears under `out`. Returns what
    happened: 'killed' or 'finished' (it ended before the kill point). With `tag` and `alive_at_kill`,
    appends the processes of the run alive just before the kill (proof the orphan check sees them)."""

    def kill() -> None:
        if tag and alive_at_kill is not None:
            alive_at_kill.append(tagged_processes(tag))
        kill_group(proc)

    rng = rng or random.Random(0)
    proc = launch(args, log_path, tag)
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                return "finished"
            if during and any(out.glob(during)):
                kill()
                return "killed"
            if at_step is not None and steps_logged(out) >= at_step:
                time.sleep(rng.uniform(0, jitter_s))
                kill()
                return "killed"
            time.sleep(0.002 if during else 0.02)
        raise TimeoutError(f"{args} did not reach the kill point in {timeout_s}s; see {log_path}")
    finally:
        if proc.poll() is None:
            kill_group(proc)


def run_to_end(args: list[str], log_path: Path, timeout_s: float = 600.0, tag: str = "") -> None:
    proc = launch(args, log_path, tag)
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


def tagged_processes(tag: str) -> list[str]:
    """'pid command' of every live process started by a run launched with `tag`."""
    needle = f"{RUN_TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = next(
                (ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:")), ""
            )
            if "Z" in state.split()[1:2]:  # a zombie is dead, waiting for its parent to reap it
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # exited meanwhile, or not ours to read
        found.append(f"{entry.name} {cmd[:120]}")
    return found


def wait_until_gone(tag: str, timeout_s: float = 30.0) -> list[str]:
    """Waits for every process of the run to exit (Ray's own processes die with their driver);
    returns those still alive after `timeout_s`."""
    deadline = time.time() + timeout_s
    while True:
        left = tagged_processes(tag)
        if not left or time.time() > deadline:
            return left
        time.sleep(0.5)
