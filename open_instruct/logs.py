"""Where a run's logs go. The console shows our own lines (progress bars, `[recipe] ...`, summaries,
warnings) and errors; the start-up logs of vLLM, Ray, DeepSpeed, transformers, datasets and torch go to
files under `<output>/logs/`. `-v` (OPEN_INSTRUCT_VERBOSE=1) leaves every library's output on the console.

    setup(verbose, quiet, name)   the CLI, once per command: the console rule; records wait in memory
    teardown()                    the command is over (in-process callers get their logging back)
    use_log_dir(path)             from here on this process's log is <path>/<name>.log (a recipe's dir wins)
    engine_log_dir()              where rollout engines write engine-<i>.log (None: verbose, or no CLI)
    redirect_output(path)         an engine actor: its stdout/stderr descriptors (and its children's) -> file
    prints_to_log(name)           a library's print()s in a block -> INFO records of logger `name`

Only a process whose CLI called `setup` routes anything: library use keeps every library's defaults.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

LOG_DIR_ENV = "OPEN_INSTRUCT_LOG_DIR"  # set once known; launched stage processes inherit it
LOG_NAME_ENV = "OPEN_INSTRUCT_LOG_NAME"  # a launched stage's processes: stage-<name>
VERBOSE_ENV = "OPEN_INSTRUCT_VERBOSE"
OWN = ("open_instruct", "reward_fns", "__main__")  # logger names whose INFO lines stay on the console
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


class _State:
    configured = False
    verbose = False
    name = "open-instruct"
    file: logging.Handler | None = None
    pending: _Pending | None = None
    dir_set_here: str | None = None  # the LOG_DIR_ENV value this process set (not inherited)


_state = _State()


class _Pending(logging.Handler):
    """Records logged before the log dir is known (config loading, imports), replayed into the file."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: collections.deque = collections.deque(maxlen=5000)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _ConsoleRule(logging.Filter):
    """Our own loggers from `own_level`, every other library's only from `other_level`."""

    def __init__(self, own_level: int, other_level: int) -> None:
        super().__init__()
        self.own_level, self.other_level = own_level, other_level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in OWN
        return record.levelno >= (self.own_level if own else self.other_level)


class _ToRoot(logging.Filter):
    """On a library logger that prints through its own handler (DeepSpeed's, set up at import, before
    we could touch it): its records go through the root's handlers -- the console rule and the file --
    instead. A logger-level filter works on a logger created before the library imports."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state.verbose or not _state.configured:
            return True
        logging.getLogger().handle(record)
        return False


class _Console(logging.StreamHandler):
    """Writes a line above a running progress bar (tqdm.write) instead of into it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - as StreamHandler: a failed write is reported, not raised
            self.handleError(record)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def setup(verbose_flag: bool, quiet: bool, name: str) -> None:
    """The CLI's logging for one command (again from scratch on a second call in the same process)."""
    teardown()  # a command run before in this process (tests call main() many times)
    root = logging.getLogger()
    _state.configured, _state.name = True, name
    _state.verbose = verbose_flag or verbose()
    root.setLevel(logging.DEBUG if _state.verbose else logging.INFO)
    if not root.handlers:  # as logging.basicConfig: an embedding app's (or pytest's) handlers stay alone
        console = _Console(sys.stderr)
        console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        if not _state.verbose:
            # quiet, and processes other than rank 0 of a launched stage: warnings of ours, errors of all
            own = logging.WARNING if quiet or _rank() > 0 else logging.INFO
            console.addFilter(_ConsoleRule(own, logging.ERROR))
        _add(root, console)
    _state.pending = _Pending()
    _add(root, _state.pending)
    logging.captureWarnings(True)  # torch/accelerate warnings, repeated per process: a logger, so a file
    ds = logging.getLogger("DeepSpeed")  # its accelerator warning is printed while `import deepspeed` runs
    if not any(isinstance(f, _ToRoot) for f in ds.filters):
        ds.addFilter(_ToRoot())


def _add(root: logging.Logger, handler: logging.Handler) -> None:
    handler._open_instruct = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def teardown() -> None:
    """Undoes `setup` for the next command in this process (its handlers, the log dir it chose)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_open_instruct", False):
            root.removeHandler(h)
            h.close()
    if _state.dir_set_here is not None and os.environ.get(LOG_DIR_ENV) == _state.dir_set_here:
        os.environ.pop(LOG_DIR_ENV)
    _state.dir_set_here, _state.file, _state.pending, _state.configured = None, None, None, False
    logging.captureWarnings(False)


def use_log_dir(path: str | Path, name: str | None = None) -> Path | None:
    """From here on this process's log records go to `<dir>/<name>.log` too (appended; the records
    logged before are written first; `name` defaults to the command's); `dir` is `path`, or the dir a
    parent process (a recipe run) already chose. Also quiets the libraries' own handlers and progress bars (not with -v). None
    when the CLI did not set logging up (library use: nothing changes)."""
    if not _state.configured:
        return None
    d = os.environ.get(LOG_DIR_ENV) or str(Path(path).resolve())
    if _state.file is not None:
        return Path(d)
    if not os.environ.get(LOG_DIR_ENV):
        os.environ[LOG_DIR_ENV] = _state.dir_set_here = d
    Path(d).mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    name = os.environ.get(LOG_NAME_ENV) or name or _state.name
    fh = logging.FileHandler(Path(d) / f"{name}.log", encoding="utf-8")
    rank = f"[rank {_rank()}] " if "RANK" in os.environ else ""
    fh.setFormatter(logging.Formatter(rank + FORMAT))
    fh.setLevel(logging.DEBUG if _state.verbose else logging.INFO)
    _add(root, fh)
    _state.file = fh
    if _state.pending is not None:
        root.removeHandler(_state.pending)
        for record in _state.pending.records:
            if record.levelno >= fh.level:
                fh.handle(record)
        _state.pending = None
    if not _state.verbose:
        quiet_libraries()
    return Path(d)


def adopt(name: str) -> None:
    """Library logger `name` (imported already) stops printing through its own console handler: its
    records reach the root's handlers (the console rule, the file). Nothing without `setup` or with -v."""
    if not _state.configured or _state.verbose:
        return
    logger = logging.getLogger(name)
    for h in list(logger.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
    logger.propagate = True


def quiet_libraries() -> None:
    """transformers' and datasets' loggers through ours; their progress bars (Loading weights, Writing
    model shards, Map) off: a stage shows its own progress."""
    try:
        import datasets.utils.logging as dlog
        import transformers.utils.logging as tlog
    except ImportError:  # a stripped-down environment: nothing to quiet
        return
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    adopt("transformers")
    adopt("datasets")


@contextlib.contextmanager
def prints_to_log(logger_name: str):
    """A library's print()s inside the block become INFO records of `logger_name` (in the file, off
    the console): DeepSpeed prints its op builds and extension loads once per process. Without
    `setup`, or with -v, the prints stay prints."""
    if not _state.configured or _state.verbose:
        yield
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        logger = logging.getLogger(logger_name)
        for line in buf.getvalue().splitlines():
            if line.strip():
                logger.info("%s", line)


def engine_log_dir() -> str | None:
    """Where rollout engines write their stdout/stderr (vLLM's and the actor's logs): this process's
    log dir; a temp dir (said once) when a command has none yet; None with -v or without the CLI."""
    if not _state.configured or _state.verbose:
        return None
    d = os.environ.get(LOG_DIR_ENV)
    if _state.file is None:
        fresh = not d
        d = str(use_log_dir(d or tempfile.mkdtemp(prefix="open-instruct-logs-")))
        if fresh:
            log.info("vLLM/Ray logs: %s (-v shows them here)", d)
    return d


def redirect_output(path: str | Path, header: str) -> None:
    """Points this process's stdout and stderr file descriptors at `path` (appended). Processes it
    starts later (vLLM's engine core and workers) inherit them, and Ray no longer streams this
    actor's output to the driver's console."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {header} (pid {os.getpid()})\n".encode())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
