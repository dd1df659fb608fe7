"""Run tracking: metrics.jsonl (the source of truth), a progress bar, wandb, and PNG plots.

Only the main process writes. `metrics.jsonl` is append-only; on resume the lines past the
resumed step are dropped first so a resumed run's file reads like an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill: everything before it is good
    return rows


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Tracker:
    """Logs one dict of scalars per step to metrics.jsonl, tqdm and (optionally) wandb."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        start_step: int = 0,
        desc: str = "train",
        enabled: bool = True,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        config: dict | None = None,
        bar_keys: tuple[str, ...] = ("loss", "lr", "tokens_per_s"),
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "metrics.jsonl"
        self.bar_keys = bar_keys
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._file = open(self.path, "a")
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=desc,
            dynamic_ncols=True,
            disable=os.environ.get("OPEN_INSTRUCT_NO_PROGRESS") == "1",
        )
        project = wandb_project or os.environ.get("WANDB_PROJECT")
        if project:
            self._wandb = self._start_wandb(project, wandb_run_name, config)

    def _truncate_after(self, step: int) -> None:
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)

    def _start_wandb(self, project: str, name: str | None, config: dict | None):
        import wandb

        # No key: log offline into the run dir (sync later with `wandb sync`); never prompt.
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id_file = self.run_dir / "wandb_run_id"
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else wandb.util.generate_id()
        run_id_file.write_text(run_id)
        return wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=str(self.run_dir),
            config=config or {},
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._bar is not None:
            shown = {k: row[k] for k in self.bar_keys if row.get(k) is not None}
            self._bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in shown.items()})
            self._bar.update(step - self._bar.n)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


def plot_metrics(
    metrics_path: str | Path, out_png: str | Path, panels: list[tuple[str, list[str]]], title: str = ""
) -> Path | None:
    """One PNG with a panel per (title, [keys]); raw values faint, a moving average bold."""
    rows = read_metrics(metrics_path)
    panels = [(t, [k for k in keys if any(r.get(k) is not None for r in rows)]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    if not rows or not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel_title, keys) in zip(axes[0], panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            line = ax.plot(xs, ys, alpha=0.3 if len(ys) > 20 else 0.9, linewidth=1)[0]
            if len(ys) > 20:
                w = max(2, len(ys) // 20)
                smooth = [
                    sum(ys[max(0, i - w + 1) : i + 1]) / len(ys[max(0, i - w + 1) : i + 1])
                    for i in range(len(ys))
                ]
                ax.plot(xs, smooth, color=line.get_color(), linewidth=2, label=key)
            else:
                line.set_label(key)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
