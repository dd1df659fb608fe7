"""Run tracking: metrics.jsonl (the source of truth), a progress bar, wandb, and PNG plots.

Only the main process writes. `metrics.jsonl` is append-only; on resume the lines past the
resumed step are dropped first so a resumed run's file reads like an uninterrupted one.

wandb (when a project is set): online if this machine has W&B credentials (WANDB_API_KEY, a key
stored by `wandb login`), offline otherwise; WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY / WANDB_DIR
are honoured; it never prompts. A stage's output dir keeps its wandb run id (`wandb_run_id`), so a
resumed stage continues the same wandb run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"

# wandb runs this module started and has not finished yet, by run id: a stage that died in this
# process (an exception out of the training loop) leaves one open; its restart finishes it first.
_open_runs: dict[str, Any] = {}


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


# ---------------------------------------------------------------------------------------------------
# wandb


def wandb_logged_in() -> bool:
    """Whether wandb would find credentials for its server on this machine, without asking the
    server: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the .netrc entry `wandb login` writes (or
    NETRC's file), an api_key in wandb's settings files. The same lookup `wandb.init` does."""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:
        auth = wbauth.authenticate_session(
            host=wandb_setup.singleton().settings.base_url,
            source="open-instruct",
            prompt=False,
            update_session=False,
            verify=False,
        )
    except Exception as e:  # a malformed key or settings file: offline loses nothing, a crash the run
        log.warning("wandb: ignoring the configured credentials (%s); logging offline", e)
        return False
    return auth is not None


def resolve_wandb_mode() -> str:
    """ "online", "offline" or "disabled": WANDB_MODE if set, else online only when logged in.
    An online mode without credentials becomes offline (wandb would prompt or fail)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return "disabled"
    if mode in ("offline", "dryrun"):
        return "offline"
    if wandb_logged_in():
        return "online"
    if mode:
        log.warning("wandb: WANDB_MODE=%s but no W&B credentials here (`wandb login`); logging offline", mode)
    return "offline"


def _new_run_id() -> str:
    # wandb's own id alphabet and length (lowercase base-36, 8 characters)
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _run_id(run_dir: Path) -> str:
    """The stage's wandb run id: kept in the run dir so a restarted stage continues its run."""
    path = run_dir / WANDB_ID_FILE
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    run_id = _new_run_id()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id


class Tracker:
    """Logs one dict of scalars per step to metrics.jsonl, tqdm and (optionally) wandb.

    wandb starts when `wandb_project` or WANDB_PROJECT is set (see the module docstring); after
    construction `wandb_mode` is "online", "offline" or None and `wandb_run_id` the run's id. A
    wandb failure (no server, bad entity) is a warning: training goes on with metrics.jsonl."""

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
        self.wandb_mode: str | None = None
        self.wandb_run_id: str | None = None
        self._wandb = None
        self._wandb_first_step = 0
        self._wandb_owns_setup = False
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
            self._start_wandb(project, wandb_run_name, desc, config)

    def _truncate_after(self, step: int) -> None:
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)

    def _start_wandb(self, project: str, name: str | None, desc: str, config: dict | None) -> None:
        import wandb
        from wandb.sdk import wandb_setup

        # wandb reads its environment once per process; when nobody set it up before us we tear it
        # down at close, so the next stage in this process sees the environment as it is then
        self._wandb_owns_setup = wandb_setup.singleton().settings_if_loaded is None
        mode = resolve_wandb_mode()
        if mode == "disabled":
            return
        run_id = _run_id(self.run_dir)
        stale = _open_runs.pop(run_id, None)
        if stale is not None:
            try:
                stale.finish(exit_code=1)  # that attempt died
            except Exception as e:
                log.warning("wandb: could not finish the interrupted run %s: %s", run_id, e)
        settings = {}
        # wandb advertises its Weave tracer on the console whenever a library it knows (openai: vLLM
        # imports it) is loaded; not ours to show
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        if "WANDB_SILENT" not in os.environ and "WANDB_QUIET" not in os.environ:
            settings["silent"] = True  # banners and summaries off; wandb's warnings still show
        try:
            run = wandb.init(
                project=project,
                name=name,
                id=run_id,
                resume="allow",
                mode=mode,
                job_type=desc,
                # WANDB_DIR wins, as wandb documents; otherwise beside the stage's other outputs
                dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
                config=config or {},
                allow_val_change=True,  # a resumed stage may change non-semantic keys (logging_steps)
                reinit="create_new",  # leave any run of the caller's own alone
                settings=wandb.Settings(**settings),
            )
        except Exception as e:
            log.warning("wandb: could not start a %s run (%s); metrics go to %s only", mode, e, self.path)
            self._teardown_wandb()
            return
        _open_runs[run_id] = run
        self._wandb = run
        self.wandb_mode = mode
        self.wandb_run_id = run_id
        # steps a resumed online run already has (logged before the kill) are not sent again:
        # wandb drops steps below its current one, with a warning per step
        self._wandb_first_step = run.starting_step
        where = run.url if mode == "online" else run.settings.sync_dir
        log.info("wandb: %s run %s (%s)", mode, run_id, where)

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
        if self._wandb is not None and step >= self._wandb_first_step:
            # wandb keeps its own timestamps; None (a non-finite value) is left out
            data = {k: v for k, v in row.items() if k not in ("step", "time") and v is not None}
            try:
                self._wandb.log(data, step=step)
            except Exception as e:
                log.warning("wandb: logging failed (%s); metrics go to %s only from now on", e, self.path)
                self._finish_wandb()

    def _finish_wandb(self) -> None:
        run, self._wandb = self._wandb, None
        if run is None:
            return
        _open_runs.pop(self.wandb_run_id, None)
        try:
            run.finish()
        except Exception as e:
            log.warning("wandb: finishing run %s failed: %s", self.wandb_run_id, e)
        if self.wandb_mode == "offline":
            log.info(
                "wandb: offline run saved in %s; upload it with `wandb sync %s`",
                run.settings.sync_dir,
                run.settings.sync_dir,
            )
        self._teardown_wandb()

    def _teardown_wandb(self) -> None:
        if self._wandb_owns_setup and not _open_runs:
            import wandb

            wandb.teardown()  # also stops wandb's service process

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        self._finish_wandb()


# ---------------------------------------------------------------------------------------------------
# plots

# The x axis of each stage's plots.
STAGE_XLABEL = {
    "sft": "optimizer step",
    "dpo": "optimizer step",
    "rlvr": "RL step (rollout batch + updates)",
}

_GRAD_NORM = ("gradient norm", "L2 norm, before clipping", ["grad_norm"])
_LR = ("learning rate", "learning rate", ["lr"])

# Recommended panels per stage: (title, y-axis label: the quantity and its unit, [metric keys]).
# Every key on one axis measures the same quantity; a key a run did not log is left out, and a
# panel with none of its keys is left out.
STAGE_PANELS: dict[str, list[tuple[str, str, list[str]]]] = {
    "sft": [
        ("training loss", "cross-entropy, nats / token", ["loss"]),
        _LR,
        _GRAD_NORM,
        ("throughput", "tokens / s", ["tokens_per_s"]),
    ],
    "dpo": [
        ("preference loss", "loss per pair", ["dpo_loss"]),
        ("NLL of chosen (RPO term)", "nats / token", ["nll"]),
        ("preference accuracy (train)", "fraction of pairs, chosen > rejected", ["rewards/accuracy"]),
        ("reward margin", "chosen − rejected implicit reward", ["rewards/margin"]),
        ("implicit rewards", "β × log-ratio to reference", ["rewards/chosen", "rewards/rejected"]),
        ("policy log-probs", "response log-prob, nats", ["logps/chosen", "logps/rejected"]),
        _LR,
        _GRAD_NORM,
    ],
    "rlvr": [
        ("verifiable reward", "mean reward per response", ["reward_mean", "eval/reward_mean"]),
        ("KL to reference", "nats / response", ["kl"]),
        ("response length", "tokens / response", ["response_length"]),
        ("policy loss", "loss per token", ["policy_loss"]),
        ("value loss (PPO)", "squared error per token", ["value_loss"]),
        ("policy entropy", "nats / token", ["entropy"]),
        ("clipped tokens", "fraction of tokens", ["clip_fraction"]),
        _GRAD_NORM,
        _LR,
    ],
}

# Legend names where a key alone says too little.
_SERIES_LABELS = {"reward_mean": "train rollouts", "eval/reward_mean": "held-out eval"}

# y labels for the old (title, [keys]) panels, from the stage panels above; "loss" means a
# different thing in each stage, so it is not here.
_KEY_YLABEL = {k: ylabel for panels in STAGE_PANELS.values() for _, ylabel, keys in panels for k in keys}
_KEY_YLABEL.pop("loss")

# Above this many points a series is drawn faint with a bold moving average; at or below it,
# as a line with markers. Schedules and counters are exact: never averaged.
_SMOOTH_ABOVE = 20
_NEVER_SMOOTHED = {"lr", "epoch", "episodes"}


def _normalise_panels(panels: list) -> list[tuple[str, str, list[str]]]:
    """(title, ylabel, keys) for every panel. An old (title, keys) panel gets its y label from the
    keys' known quantity (else the title) and is split where its keys measure different quantities."""
    out = []
    for panel in panels:
        if len(panel) == 3:
            out.append((panel[0], panel[1], list(panel[2])))
            continue
        title, keys = panel
        groups: dict[str, list[str]] = {}
        for k in keys:
            groups.setdefault(_KEY_YLABEL.get(k, title), []).append(k)
        for ylabel, ks in groups.items():
            sub = title if len(groups) == 1 else f"{title}: {', '.join(ks)}"
            out.append((sub, ylabel, ks))
    return out


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [
        (r["step"], r[key])
        for r in rows
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and "step" in r
    ]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _moving_average(ys: list[float], w: int) -> list[float]:
    """Centred mean over about w points (no lag behind the raw values); the window narrows
    symmetrically towards the ends, so the first and last points are their raw values."""
    prefix = [0.0]
    for y in ys:
        prefix.append(prefix[-1] + y)
    n, out = len(ys), []
    for i in range(n):
        h = min(w // 2, i, n - 1 - i)
        out.append((prefix[i + h + 1] - prefix[i - h]) / (2 * h + 1))
    return out


def _legend_labels(keys: list[str]) -> list[str]:
    """Keys as legend entries, without a prefix they all share ("rewards/chosen" -> "chosen")."""
    prefixes = {k.split("/", 1)[0] for k in keys if "/" in k}
    strip = len(prefixes) == 1 and all("/" in k for k in keys)
    return [_SERIES_LABELS.get(k, k.split("/", 1)[1] if strip else k) for k in keys]


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols): one row up to 3 panels, 2 x 2 for 4, else 3 columns."""
    cols = n if n <= 3 else 2 if n == 4 else 3
    return math.ceil(n / cols), cols


def build_figure(rows: list[dict], panels: list, title: str = "", xlabel: str = "step"):
    """The matplotlib figure `plot_metrics` saves, or None when no panel has data."""
    panels = [(t, y, [k for k in keys if _series(rows, k)[0]]) for t, y, keys in _normalise_panels(panels)]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    nrows, ncols = _grid(len(panels))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.6 * ncols, 3.3 * nrows + (0.5 if title else 0.2)),
        squeeze=False,
        layout="constrained",
    )
    smoothed = False
    for ax, (panel_title, ylabel, keys) in zip(axes.flat, panels):
        for key, label in zip(keys, _legend_labels(keys)):
            xs, ys = _series(rows, key)
            if key in _NEVER_SMOOTHED:
                ax.plot(xs, ys, linewidth=2, label=label)
            elif len(ys) > _SMOOTH_ABOVE:
                raw = ax.plot(xs, ys, alpha=0.25, linewidth=1)[0]
                w = max(5, len(ys) // 12)
                ax.plot(xs, _moving_average(ys, w), color=raw.get_color(), linewidth=2, label=label)
                smoothed = True
            else:
                ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.5, label=label)
        ax.set_title(panel_title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)  # "+6.212" above the axis misleads
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.remove()
    if title:
        fig.suptitle(title, fontsize=12)
    if smoothed:
        fig.supxlabel(
            "faint: each logged step; bold: moving average", x=0.99, ha="right", fontsize=8, color="0.4"
        )
    return fig


def plot_metrics(
    metrics_path: str | Path,
    out_png: str | Path,
    panels: list,
    title: str = "",
    xlabel: str = "step",
) -> Path | None:
    """One PNG of `panels` from metrics.jsonl, in a grid of at most 3 columns; None if nothing to draw.

    A panel is (title, ylabel, [keys]) or the older (title, [keys]); keys with no logged value are
    left out. Long series are drawn faint with a bold moving average; a legend appears only when a
    panel has more than one series."""
    fig = build_figure(read_metrics(metrics_path), panels, title=title, xlabel=xlabel)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_stage(metrics_path: str | Path, out_png: str | Path, stage: str, title: str = "") -> Path | None:
    """`plot_metrics` with the stage's recommended panels and x-axis label ("sft", "dpo", "rlvr")."""
    if stage not in STAGE_PANELS:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGE_PANELS)}")
    return plot_metrics(metrics_path, out_png, STAGE_PANELS[stage], title=title, xlabel=STAGE_XLABEL[stage])
