"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never half.

Every file the toolkit writes that a later step trusts (configs, lineage, eval results, reports,
pair files, manifests) goes through `atomic_write_text` / `atomic_write_json`: the content goes to a
temp file next to the target, is flushed to disk, and is renamed over the target (a rename is atomic
on one filesystem). Published files get the mode a plain `open()` would give them (0644 under the
usual umask), not the 0600 of a temp file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable_mode() -> int:
    """The mode a new file gets from `open()`: 0666 minus the umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    """Writes `text` to `path` atomically (parent dirs created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, readable_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1, **kwargs) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str, **kwargs))


def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    import yaml

    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_json(path: str | Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or unreadable (a torn file counts as missing)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
