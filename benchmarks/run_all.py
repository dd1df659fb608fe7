"""Runs every benchmark and writes benchmarks/RESULTS.md (`make bench`).

    python benchmarks/run_all.py [--only sft,dpo] [--timeout 1800] [--output benchmarks/RESULTS.md]

A benchmark is any `benchmarks/*.py` module (other than this one and `_*.py`) that exposes
`run() -> list[dict]`; each row has `stage`, `metric`, `value`, `unit`, and optionally `baseline`
(TRL's value, or null when there is no TRL counterpart), `ratio`, `target`, `ok`. Each module runs in
its own subprocess, so a benchmark that crashes, hangs (timeout) or leaks memory cannot stop or skew
the others; its failure is reported in RESULTS.md next to the numbers of the ones that worked.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NO_RUN_EXIT = 3  # the child's exit status for "this module has no run()"


def discover(only: list[str] | None = None) -> list[Path]:
    mods = sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    if only:
        mods = [p for p in mods if p.stem in only]
    return mods


def child(module_path: str, out_json: str) -> int:
    """In the subprocess: import the module by path, call run(), write its rows as JSON."""
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{Path(module_path).stem}", module_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not callable(getattr(mod, "run", None)):
        return NO_RUN_EXIT
    rows = mod.run()
    Path(out_json).write_text(json.dumps(rows, default=float))
    return 0


def run_one(path: Path, timeout: float) -> dict:
    """{"name", "status" (ok | no run() | failed | timeout), "rows", "seconds", "error"}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        log = Path(tmp) / "log.txt"
        t0 = time.time()
        with open(log, "w") as f:
            try:
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--child", str(path), str(out)],
                    cwd=REPO,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    env=dict(os.environ, OPEN_INSTRUCT_NO_PROGRESS="1"),
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
        seconds = time.time() - t0
        tail = log.read_text(errors="replace")[-3000:]
        if code is None:
            return {
                "name": path.stem,
                "status": "timeout",
                "rows": [],
                "seconds": seconds,
                "error": f"no result after {timeout:.0f}s\n{tail}",
            }
        if code == NO_RUN_EXIT:
            return {"name": path.stem, "status": "no run()", "rows": [], "seconds": seconds, "error": None}
        if code != 0 or not out.is_file():
            return {
                "name": path.stem,
                "status": "failed",
                "rows": [],
                "seconds": seconds,
                "error": f"exit status {code}\n{tail}",
            }
        return {
            "name": path.stem,
            "status": "ok",
            "rows": json.loads(out.read_text()),
            "seconds": seconds,
            "error": None,
        }


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gb": ram_gb,
        "load_1min": load,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)


def render(results: list[dict], started: float) -> str:
    sys.path.insert(0, str(REPO))
    from open_instruct.recipe.lineage import git_info, package_versions

    m = machine()
    git = git_info(REPO)
    L = [
        "# Benchmarks: this toolkit vs TRL",
        "",
        f"Generated by `make bench` (benchmarks/run_all.py) on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"git `{(git['commit'] or 'unknown')[:12]}`{' (dirty)' if git['dirty'] else ''}; "
        f"total {time.time() - started:.0f}s.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}; {m['cores']} cores ({m['usable_cores']} usable by this process); "
        f"RAM {m['ram_gb']:.1f} GB"
        if m["ram_gb"]
        else f"- CPU: {m['cpu']}; {m['cores']} cores",
        f"- {m['os']}, Python {m['python']}; 1-minute load average at the end: {m['load_1min']:.1f}"
        if m["load_1min"] is not None
        else f"- {m['os']}, Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items() if v),
        "",
        "Shared machines: other jobs' load slows both sides of a comparison; the ratios are more stable "
        "than the absolute numbers.",
        "",
        "## Results",
        "",
        "| stage | metric | this toolkit | TRL | ratio | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res["rows"]:
            unit = r.get("unit", "")
            value = f"{_fmt(r.get('value'))} {unit}".strip()
            base = f"{_fmt(r['baseline'])} {unit}".strip() if r.get("baseline") is not None else "-"
            ratio = f"{r['ratio']:.2f}x" if isinstance(r.get("ratio"), (int, float)) else "-"
            L.append(
                f"| {r.get('stage', res['name'])} | {r.get('metric', '?')} | {value} | {base} | {ratio} "
                f"| {r.get('target') or '-'} | {_fmt(r.get('ok'))} |"
            )
    L += ["", "## Benchmark runs", "", "| module | status | wall time |", "|---|---|---|"]
    L += [f"| benchmarks/{r['name']}.py | {r['status']} | {r['seconds']:.0f}s |" for r in results]
    failed = [r for r in results if r["status"] in ("failed", "timeout")]
    for r in failed:
        L += ["", f"### {r['name']}: {r['status']}", "", "```", r["error"].strip()[-2500:], "```"]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated module names (e.g. sft,dpo)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    ap.add_argument("--output", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--child", nargs=2, metavar=("MODULE", "OUT_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child)
    started = time.time()
    results = []
    for path in discover(args.only.split(",") if args.only else None):
        print(f"[bench] {path.name} ...", flush=True)
        res = run_one(path, args.timeout)
        print(
            f"[bench] {path.name}: {res['status']} in {res['seconds']:.0f}s ({len(res['rows'])} rows)",
            flush=True,
        )
        results.append(res)
    text = render(results, started)
    Path(args.output).write_text(text)
    print(text)
    print(f"wrote {args.output}")
    return 1 if any(r["status"] in ("failed", "timeout") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
