"""Atomic, self-verifying checkpoint directories.

A checkpoint is written into `<dir>/.tmp-<name>`, a `manifest.json` with every file's size and
checksum is written last, and only then is the directory renamed to `<dir>/<name>`. A rename is
atomic on one filesystem, so a reader sees either no checkpoint or a complete one. On load the
manifest is checked again; a corrupted or truncated checkpoint is skipped (with a warning) in
favour of the previous one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from ..io import atomic_write_json, fsync_dir, fsync_file, readable_mode

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


def _hasher():
    try:  # xxh3 is ~10x faster than sha256; checksums catch torn writes, not attackers
        import xxhash

        return xxhash.xxh3_128(), "xxh3_128"
    except ImportError:  # pragma: no cover - xxhash ships with datasets
        import hashlib

        return hashlib.sha256(), "sha256"


def file_checksum(path: Path) -> tuple[str, str]:
    h, algo = _hasher()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest(), algo


def write_manifest(ckpt_dir: Path, extra: dict | None = None) -> dict:
    files = {}
    algo = None
    for p in sorted(ckpt_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            digest, algo = file_checksum(p)
            files[str(p.relative_to(ckpt_dir))] = {"size": p.stat().st_size, "checksum": digest}
    manifest = {"algorithm": algo, "files": files, **(extra or {})}
    atomic_write_json(ckpt_dir / MANIFEST, manifest, sort_keys=True)
    return manifest


def verify(ckpt_dir: Path) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not."""
    mpath = ckpt_dir / MANIFEST
    if not mpath.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, OSError) as e:
        return f"unreadable manifest ({e})"
    for rel, info in manifest.get("files", {}).items():
        p = ckpt_dir / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != info["size"]:
            return f"{rel} has {p.stat().st_size} bytes, manifest says {info['size']}"
        if file_checksum(p)[0] != info["checksum"]:
            return f"{rel} checksum mismatch"
    return None


def tmp_dir_for(parent: Path, name: str) -> Path:
    return parent / f".tmp-{name}"


def commit(tmp: Path, final: Path, extra_manifest: dict | None = None) -> None:
    """Seals `tmp` with a manifest and renames it to `final` (replacing an old `final`)."""
    write_manifest(tmp, extra_manifest)
    for p in tmp.rglob("*"):
        if p.is_file():
            fsync_file(p)
    if final.exists():
        trash = final.parent / f".old-{final.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def list_steps(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    out = []
    for p in ckpt_root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_valid(ckpt_root: Path) -> tuple[int, Path] | None:
    """The newest intact step checkpoint; broken ones are reported and skipped."""
    for step, path in reversed(list_steps(ckpt_root)):
        problem = verify(path)
        if problem is None:
            return step, path
        log.warning("checkpoint %s is unusable (%s); falling back to the previous one", path, problem)
    return None


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Keeps the newest `keep_last` step checkpoints; removes stale temp dirs."""
    for p in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_root.glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep_last <= 0:
        return
    steps = list_steps(ckpt_root)
    for _, path in steps[:-keep_last]:
        # rename first: a kill mid-delete must not leave a half-deleted dir under a sealed name
        trash = ckpt_root / f".old-{path.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


MODEL_MANIFEST = "model_manifest.json"


def publish_model(tmp: Path, out_dir: Path) -> str:
    """Moves a finished HF checkpoint from `tmp` into `out_dir` (which also holds metrics, plots and
    checkpoints/), then writes `model_manifest.json` last: its presence means the model files are
    complete. Returns the model digest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / MODEL_MANIFEST
    if stale.exists():
        stale.unlink()
    files = {}
    mode = readable_mode()  # some writers (safetensors, tokenizers) leave 0600 files: publish readable ones
    for p in sorted(tmp.rglob("*")):  # subfolders too (a LoRA stage's merged/ weights)
        if p.is_file():
            fsync_file(p)
            os.chmod(p, mode)
            files[p.relative_to(tmp).as_posix()] = {"size": p.stat().st_size, "checksum": file_checksum(p)[0]}
    for p in sorted(tmp.iterdir()):
        if p.is_dir():
            fsync_dir(p)
            shutil.rmtree(out_dir / p.name, ignore_errors=True)
        elif not p.is_file():
            continue
        os.replace(p, out_dir / p.name)
    shutil.rmtree(tmp, ignore_errors=True)
    digest = _digest_of(files)
    atomic_write_json(
        out_dir / MODEL_MANIFEST,
        {"algorithm": _hasher()[1], "files": files, "digest": digest},
        sort_keys=True,
    )
    fsync_dir(out_dir)
    return digest


def _digest_of(files: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(files):
        if name.endswith((".safetensors", ".json", ".model", ".txt")) and name != MODEL_MANIFEST:
            h.update(f"{name}:{files[name]['checksum']}\n".encode())
    return h.hexdigest()[:32]


def verify_model(out_dir: Path) -> str | None:
    """The model digest when `out_dir` holds a complete, intact published model, else None."""
    mpath = out_dir / MODEL_MANIFEST
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    for name, info in manifest["files"].items():
        p = out_dir / name
        if not p.is_file() or p.stat().st_size != info["size"] or file_checksum(p)[0] != info["checksum"]:
            log.warning("%s: %s does not match its manifest", out_dir, name)
            return None
    return manifest["digest"]


def model_digest(name_or_path: str) -> str:
    """A content digest of a model's weights/config: from its manifest when we published it, from
    its files for any other local directory, and `hub:<id>@<revision-in-cache>` for a hub id."""
    path = Path(name_or_path)
    if path.is_dir():
        published = verify_model(path)
        if published:
            return published
        files = {
            p.name: {"checksum": file_checksum(p)[0]}
            for p in sorted(path.iterdir())
            if p.is_file() and p.name.endswith((".safetensors", ".bin", "config.json"))
        }
        return _digest_of(files) if files else "empty"
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(name_or_path, local_files_only=True)
        return model_digest(local)
    except Exception:  # not downloaded yet (dry runs): the id is the best we have
        return f"hub:{name_or_path}"
