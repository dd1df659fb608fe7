"""What a recipe run shows at the end: the summary table on the console and `<output>/report.md` (the same
table, each stage's lineage, plots and held-out numbers)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_text
from . import lineage as lin
from .schema import Plan
from .stages import STAGE_TYPES


@dataclass
class StageResult:
    name: str
    type: str
    status: str  # trained | resumed | skipped | no change
    seconds: float | None
    steps: int | None
    digest: str | None
    heldout: dict | None
    stage_eval: dict | None  # the stage's own eval.json (DPO preference accuracy, RLVR eval/*)
    out: Path


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def heldout_label(plan: Plan) -> str:
    ev = plan.eval
    if ev is None:
        return "held-out"
    how = (
        "greedy pass@1"
        if ev.samples == 1 and ev.resolved_temperature == 0
        else f"pass@1, {ev.samples} samples at T={ev.resolved_temperature:g}"
    )
    return f"held-out reward ({how})"


def stage_metric(r: StageResult) -> str:
    """The number each stage type should improve, from the stage's own eval.json."""
    return STAGE_TYPES[r.type].metric(r.stage_eval or {}) if r.type in STAGE_TYPES else ""


def _fmt_secs(s: float | None) -> str:
    if s is None:
        return "-"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def summary_rows(plan: Plan, results: list[StageResult]) -> list[list[str]]:
    rows = []
    prev = None
    for r in results:
        acc = (r.heldout or {}).get("reward_mean")
        delta = f" ({100 * (acc - prev):+.1f})" if acc is not None and prev is not None else ""
        rows.append(
            [
                r.name,
                r.type,
                r.status,
                _fmt_secs(r.seconds),
                "-" if r.steps is None else str(r.steps),
                _pct(acc) + delta,
                stage_metric(r),
            ]
        )
        prev = acc if acc is not None else prev
    return rows


SUMMARY_HEADER = ["stage", "type", "status", "time", "steps", "held-out", "stage metric"]


def format_summary(plan: Plan, results: list[StageResult], total: float) -> str:
    rows = summary_rows(plan, results)
    header = list(SUMMARY_HEADER)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [
        "",
        f"== recipe {plan.recipe.name}: {len(plan.stages)} stage(s) in {plan.output} "
        f"({_fmt_secs(total)} this run)",
        f"   held-out = {heldout_label(plan)} on {plan.eval_label}"
        if plan.eval
        else "   (no held-out eval: eval: null)",
        line(header),
        line(["-" * w for w in widths]),
    ]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _steps_without_signal(out: Path) -> tuple[int, int] | None:
    """(steps without a learning signal, steps) of an RL stage from its metrics.jsonl (last row per
    step: a resumed run may repeat one), None when it had none or is no RL stage."""
    from ..track import read_metrics

    by_step = {r["step"]: r["no_signal"] for r in read_metrics(out / "metrics.jsonl") if "no_signal" in r}
    dead = sum(1 for v in by_step.values() if v)
    return (dead, len(by_step)) if dead else None


def write_report(plan: Plan, results: list[StageResult], total: float) -> Path:
    git = lin.git_info()
    L = [
        f"# Recipe `{plan.recipe.name}`",
        "",
        f"Run directory `{plan.output}`; recipe `{plan.recipe_path}`"
        + (f" with `--set {' '.join(plan.overrides)}`" if plan.overrides else "")
        + ".",
        f"Generated {lin.now()}; git commit `{git['commit']}`{' (dirty)' if git['dirty'] else ''}.",
        "",
    ]
    if plan.recipe.description:
        L += [plan.recipe.description.strip(), ""]
    L += ["## Summary", ""]
    if plan.eval:
        L += [
            f"Held-out = {heldout_label(plan)} on `{plan.eval_label}`"
            f"{f' (first {plan.eval.limit} prompts)' if plan.eval.limit else ''}; the number in brackets is the "
            f"change from the previous row.",
            "",
        ]
    L.append("| " + " | ".join(SUMMARY_HEADER) + " |")
    L.append("|" + "---|" * len(SUMMARY_HEADER))
    for row in summary_rows(plan, results):
        L.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    L.append("")
    for r in results[1:]:
        rec = lin.read(r.out) or {}
        L += [f"## {r.name} ({r.type})", ""]
        parent = rec.get("parent", {})
        L.append(f"- started from `{parent.get('name_or_path')}` (digest `{parent.get('digest')}`)")
        L.append(
            f"- model `{r.out}` (digest `{r.digest}`), status {r.status}, wall time {_fmt_secs(r.seconds)}"
        )
        for role, d in (rec.get("data") or {}).items():
            L.append(
                f"- data ({role}) `{d.get('path')}`: {d.get('rows', '?')} rows, content hash "
                f"`{str(d.get('content_hash'))[:16]}`"
            )
        for name, info in (rec.get("rewards") or {}).items():
            L.append(
                f"- reward `{name}` = `{info.get('function')}` (source sha256 `{str(info.get('source_sha256'))[:16]}`)"
            )
        if r.stage_eval:
            L.append(f"- stage eval: {stage_metric(r) or json.dumps(r.stage_eval)[:300]}")
        dead = _steps_without_signal(r.out)
        if dead:
            L.append(
                f"- **{dead[0]} of {dead[1]} RL steps had no learning signal** (`metrics.jsonl`: no_signal, "
                "zero_advantage, tied_group_fraction)"
            )
        L.append("")
        for png in sorted(r.out.glob("*.png")):
            rel = os.path.relpath(png, plan.output)
            L += [f"![{png.stem}]({rel})", ""]
        if r.heldout:
            L += ["| held-out metric | value |", "|---|---|"]
            L += [
                f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in r.heldout.items()
            ]
            L.append("")
    if results and results[0].heldout:
        L += ["## base model", "", "| held-out metric | value |", "|---|---|"]
        L += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in results[0].heldout.items()
        ]
        L.append("")
    return atomic_write_text(plan.output / "report.md", "\n".join(L))
