"""What the benchmark scripts share: the result table they print when run by hand."""

from __future__ import annotations


def print_table(rows: list[dict]) -> None:
    """Rows of run(): stage, metric, value, unit, baseline (TRL; None when it has no counterpart), ratio, target."""
    print("| stage | metric | this toolkit | TRL | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = "-" if r.get("baseline") is None else f"{r['baseline']:.1f} {r['unit']}"
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        print(
            f"| {r['stage']} | {r['metric']} | {r['value']:.1f} {r['unit']} | {base} | {ratio} "
            f"| {r.get('target') or '-'} |"
        )


def report(result: dict) -> None:
    """In a benchmark's child process: hand the measurements to `run_child`."""
    import json

    print("RESULT " + json.dumps(result), flush=True)


def run_child(
    script: str, args: list[str], what: str, env: dict | None = None, timeout: float = 3600
) -> dict:
    """Runs `python script args...` in a fresh process (its own caches and peak RSS), offline, with
    `env` added, and returns what it `report`ed; a failure raises with the child's error output."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    full_env = dict(
        os.environ,
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OPEN_INSTRUCT_CACHE=tempfile.mkdtemp(prefix="bench_cache_"),
        TQDM_DISABLE="1",
        **(env or {}),
    )
    proc = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=Path(script).resolve().parent.parent,
        timeout=timeout,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{err}")
    return json.loads(lines[-1][len("RESULT ") :])
