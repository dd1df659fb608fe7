"""Parent side of the code sandbox: start the bootstrap, feed it the job, police time and output.

The child runs ``python -I bootstrap.py`` (isolated mode: no PYTHON* variables, no user site, the
script's folder not on sys.path) with an environment holding only PATH, HOME, TMPDIR and LANG (no
secrets from ours), in a new session whose whole process group is SIGKILLed at the wall-time limit or
when its output passes the limit. Its scratch directory is created here and removed afterwards. What
the bootstrap does inside is described in ``bootstrap.py``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.py")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run (all tests of one completion)."""

    wall_s: float = 10.0  # whole run, start-up included; the process group is killed after it
    cpu_s: float = 5.0  # RLIMIT_CPU
    per_test_timeout_s: float = 2.0  # timer around the solution and around each test
    memory_mb: int = 1024  # RLIMIT_AS
    output_bytes: int = 1 << 20  # per test (captured print output) and for raw stdout as a whole
    file_size_mb: int = 16  # RLIMIT_FSIZE
    scratch_mb: int = 64  # size of the scratch tmpfs
    max_processes: int = 16  # RLIMIT_NPROC (enforced for a non-root uid)
    max_open_files: int = 64  # RLIMIT_NOFILE
    namespaces: bool = True  # try net/mount/pid namespaces


@dataclass
class SandboxResult:
    """What came back: per-test results in order, and how the run ended."""

    tests: list[dict] = field(default_factory=list)
    solution_error: str | None = None
    done: bool = False  # the bootstrap reported the end of the job
    killed: str | None = None  # "wall_time" or "output_limit" when we killed it
    exit_code: int | None = None
    stderr_tail: str = ""
    measures: dict = field(default_factory=dict)
    seconds: float = 0.0


def _read_available(stream_fd: int, cap_left: int) -> bytes:
    try:
        return os.read(stream_fd, max(1, min(65536, cap_left)))
    except BlockingIOError:
        return b""


def run_python(code: str, tests: list[str], mode: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` then ``tests`` in the sandbox.

    mode "asserts": each test is Python code (typically ``assert f(1) == 2``) run after the solution in
    its namespace; the result per test is ok/error. mode "stdio": each test is an input text; the
    solution runs once per input with it on stdin and its printed output is returned per test.
    """
    limits = limits or SandboxLimits()
    if mode not in ("asserts", "stdio"):
        raise ValueError(f"sandbox mode must be 'asserts' or 'stdio', not {mode!r}")
    scratch = tempfile.mkdtemp(prefix="rf-sandbox-")
    os.chmod(scratch, 0o700)
    nonce = secrets.token_hex(16)
    job = dict(
        asdict(limits),
        code=code,
        tests=list(tests),
        mode=mode,
        scratch=scratch,
        nonce=nonce,
        run_uid=random.randint(200_000, 265_000),
    )
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
    started = time.monotonic()
    result = SandboxResult()
    stdout_cap = limits.output_bytes * (len(tests) + 2) + 65536
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=scratch,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        out, err = _communicate(proc, json.dumps(job).encode(), started + limits.wall_s, stdout_cap, result)
    finally:
        _kill_group(proc)
        result.exit_code = proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.monotonic() - started
    result.stderr_tail = err[-2000:].decode("utf-8", errors="replace")
    _parse_verdicts(out, nonce, result)
    _warn_if_weak(result.measures)
    return result


_KEY_MEASURES = {"namespaces": "net+mount+pid", "read_only_root": True, "audit_hook": True}
_warned_weak = False


def _warn_if_weak(measures: dict) -> None:
    """Say once per process when the OS refused part of the isolation (the run still goes ahead)."""
    global _warned_weak
    if _warned_weak or not measures:
        return
    missing = {k: measures.get(k) for k, want in _KEY_MEASURES.items() if measures.get(k) != want}
    if missing:
        _warned_weak = True
        log.warning(
            "code sandbox runs with reduced isolation on this machine: %s (see docs/rewards.md)", missing
        )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _communicate(
    proc: subprocess.Popen, job: bytes, deadline: float, stdout_cap: int, result: SandboxResult
) -> tuple[bytes, bytes]:
    """Write the job, read stdout/stderr until EOF, the deadline, or the output cap."""
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    pending = memoryview(job)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    open_reads = 2
    stderr_cap = 65536
    try:
        while open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                result.killed = "wall_time"
                _kill_group(proc)
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        n = os.write(fd, pending[:65536])
                    except (BrokenPipeError, BlockingIOError):
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                buf = streams[fd]
                is_stdout = fd == proc.stdout.fileno()
                cap = stdout_cap if is_stdout else stderr_cap
                chunk = _read_available(fd, cap + 1 - len(buf) if is_stdout else 65536)
                if not chunk:
                    sel.unregister(fd)
                    open_reads -= 1
                    continue
                if is_stdout:
                    buf += chunk
                    if len(buf) > cap:
                        result.killed = "output_limit"
                        _kill_group(proc)
                        open_reads = 0
                        break
                else:
                    # Keep only the tail of stderr: a flood there is not our problem, but must not pile up.
                    buf += chunk
                    if len(buf) > stderr_cap:
                        del buf[: len(buf) - stderr_cap]
    finally:
        sel.close()
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
    return bytes(streams[proc.stdout.fileno()]), bytes(streams[proc.stderr.fileno()])


def _parse_verdicts(out: bytes, nonce: str, result: SandboxResult) -> None:
    marker = nonce.encode() + b" "
    for line in out.split(b"\n"):
        at = line.find(marker)
        if at < 0:
            continue
        try:
            msg = json.loads(line[at + len(marker) :].decode("utf-8"))
        except ValueError:
            continue
        if "measures" in msg:
            result.measures = msg["measures"]
        elif "phase" in msg:
            result.solution_error = msg.get("error")
        elif "test" in msg:
            result.tests.append(msg)
        elif msg.get("done"):
            result.done = True


_PROBE: dict | None = None


def probe_sandbox() -> dict:
    """The measures the sandbox actually gets on this machine (cached after the first call)."""
    global _PROBE
    if _PROBE is None:
        run = run_python("x = 1", ["assert x == 1"], "asserts", SandboxLimits(wall_s=20))
        _PROBE = dict(run.measures, works=bool(run.tests and run.tests[0].get("ok")))
    return dict(_PROBE)
