"""metrics.jsonl across a resume and a torn last line; the training-curve PNGs: a grid of labelled
panels (one quantity per axis, integer steps), not a strip."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from open_instruct.track import (
    STAGE_PANELS,
    STAGE_XLABEL,
    Tracker,
    build_figure,
    plot_metrics,
    plot_stage,
    read_metrics,
)

# dpo.py's panels before STAGE_PANELS: three quantities on the first axis, five panels in a row
# (a 2750x396 strip)
OLD_DPO_PANELS = [
    ("loss", ["loss", "dpo_loss", "nll"]),
    ("reward margin", ["rewards/margin"]),
    ("preference accuracy (train)", ["rewards/accuracy"]),
    ("rewards", ["rewards/chosen", "rewards/rejected"]),
    ("learning rate", ["lr"]),
]


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def _dpo_rows(n: int, nll: bool = False) -> list[dict]:
    rows = []
    for s in range(1, n + 1):
        r = {
            "step": s,
            "loss": 0.7 - 0.002 * s,
            "dpo_loss": 0.69 - 0.002 * s + 0.01 * math.sin(s),
            "rewards/chosen": -0.01 * s,
            "rewards/rejected": -0.03 * s,
            "rewards/margin": 0.02 * s,
            "rewards/accuracy": min(1.0, 0.5 + 0.01 * s),
            "logps/chosen": -5.0 - 0.01 * s,
            "logps/rejected": -12.0 - 0.05 * s,
            "lr": 5e-5 * (1 - s / n),
            "grad_norm": 3.0 + math.cos(s),
            "tokens_per_s": 7000.0,
        }
        if nll:
            r["nll"] = 0.02
        rows.append(r)
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _visible_series(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


# ---- metrics.jsonl ------------------------------------------------------------------------------


def test_resume_drops_lines_past_the_checkpoint_and_continues(tmp_path):
    run = tmp_path / "run"
    tr = Tracker(run, total_steps=10)
    for s in range(1, 9):  # killed after step 8; the newest checkpoint is step 5
        tr.log(s, {"loss": 1.0 / s})
    tr.close()
    tr = Tracker(run, total_steps=10, start_step=5)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    for s in range(6, 11):
        tr.log(s, {"loss": 2.0 / s})
    tr.close()
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[5]["loss"] == pytest.approx(2.0 / 6) and rows[4]["loss"] == pytest.approx(1.0 / 5)
    assert tr.wandb_mode is None and not (run / "wandb").exists()  # no project: no wandb


def test_a_torn_last_line_is_dropped_and_the_file_stays_parseable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "metrics.jsonl"
    good = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3))
    path.write_text(good + '{"step": 4, "loss": 0.9')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    tr = Tracker(run, total_steps=5, start_step=3)
    tr.log(4, {"loss": 0.8, "bad": float("nan")})
    tr.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]  # every line parses
    assert json.loads(lines[-1]) == {
        "step": 4,
        "time": json.loads(lines[-1])["time"],
        "loss": 0.8,
        "bad": None,
    }


# ---- plots ------------------------------------------------------------------------------------


def test_stage_panels_are_a_labelled_grid_with_integer_steps():
    rows = _dpo_rows(40)  # no nll: the RPO panel is left out
    fig = build_figure(rows, STAGE_PANELS["dpo"], title="dpo", xlabel=STAGE_XLABEL["dpo"])
    axes = fig.get_axes()
    assert len(axes) == len(STAGE_PANELS["dpo"]) - 1
    assert "NLL of chosen (RPO term)" not in {ax.get_title() for ax in axes}
    fig.canvas.draw()
    columns = {round(ax.get_position().x0, 3) for ax in axes}
    grid_rows = {round(ax.get_position().y0, 3) for ax in axes}
    assert len(columns) == 3 and len(grid_rows) == 3  # 7 panels: 3 + 3 + 1
    for ax in axes:
        assert ax.get_xlabel() == "optimizer step"
        assert ax.get_ylabel(), ax.get_title()
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
        series = {line.get_label() for line in _visible_series(ax)}
        # a legend only where it tells series apart
        assert (ax.get_legend() is not None) == (len(series) > 1), ax.get_title()
    by_title = {ax.get_title(): ax for ax in axes}
    assert {line.get_label() for line in _visible_series(by_title["implicit rewards"])} == {
        "chosen",
        "rejected",
    }
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_old_panel_format_gets_one_quantity_per_labelled_axis(tmp_path):
    metrics = _write(tmp_path / "metrics.jsonl", _dpo_rows(30, nll=True))
    fig = build_figure(read_metrics(metrics), OLD_DPO_PANELS)
    axes = fig.get_axes()
    # the mixed "loss" panel became loss / dpo_loss / nll, each on its own axis
    keyed = {ax.get_title(): [line.get_label() for line in _visible_series(ax)] for ax in axes}
    assert keyed["loss: dpo_loss"] == ["dpo_loss"] and keyed["loss: nll"] == ["nll"]
    assert len(axes) == 7 and all(ax.get_ylabel() and ax.get_xlabel() == "step" for ax in axes)
    ylabels = {ax.get_title(): ax.get_ylabel() for ax in axes}
    assert ylabels["loss: nll"] == "nats / token" and ylabels["learning rate"] == "learning rate"
    import matplotlib.pyplot as plt

    plt.close(fig)

    png = plot_metrics(metrics, tmp_path / "dpo_curves.png", OLD_DPO_PANELS, title="dpo: x")
    width, height = _png_size(png)
    assert width <= 1600 and height >= width / 2, (width, height)  # a grid, not a 2750x396 strip


def test_long_series_get_a_centred_moving_average_and_schedules_stay_exact(tmp_path):
    rows = [{"step": s, "loss": float(s), "lr": 1e-3 * s} for s in range(1, 61)]
    fig = build_figure(rows, [("loss", "nats / token", ["loss"]), ("learning rate", "learning rate", ["lr"])])
    loss_ax, lr_ax = fig.get_axes()
    faint, bold = loss_ax.get_lines()
    assert faint.get_alpha() < 0.5 and bold.get_linewidth() > faint.get_linewidth()
    # the average of a straight line is the line itself: a centred window does not lag behind it
    assert list(bold.get_ydata()) == pytest.approx([float(s) for s in range(1, 61)])
    assert len(lr_ax.get_lines()) == 1  # a learning-rate schedule is drawn as it is, not averaged
    import matplotlib.pyplot as plt

    plt.close(fig)
    # step-to-step noise is averaged out of the bold line
    noisy = [{"step": s, "loss": 1.0 + (-1) ** s} for s in range(1, 61)]
    fig = build_figure(noisy, [("loss", "nats / token", ["loss"])])
    bold = fig.get_axes()[0].get_lines()[1]
    assert all(abs(y - 1.0) < 0.3 for y in bold.get_ydata()[5:-5])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_stage_draws_each_stage_and_rejects_unknown_ones(tmp_path):
    metrics = _write(tmp_path / "metrics.jsonl", _dpo_rows(5))
    png = plot_stage(metrics, tmp_path / "dpo.png", "dpo", title="dpo: run")
    assert png is not None and _png_size(png)[0] > 0
    rlvr = [{"step": 0, "eval/reward_mean": 0.2}] + [
        {"step": s, "reward_mean": 0.2 + 0.01 * s, "kl": 0.1 * s, "grad_norm": 1.0} for s in (1, 2)
    ]
    fig = build_figure(rlvr, STAGE_PANELS["rlvr"], xlabel=STAGE_XLABEL["rlvr"])
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert titles == ["verifiable reward", "KL to reference", "gradient norm"]
    reward = fig.get_axes()[0]
    assert {line.get_label() for line in _visible_series(reward)} == {"train rollouts", "held-out eval"}
    fig.canvas.draw()
    for ax in fig.get_axes():  # steps 0..2: no 0.25-step ticks
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert plot_stage(_write(tmp_path / "empty.jsonl", []), tmp_path / "none.png", "sft") is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ValueError, match="sft, dpo, rlvr"):
        plot_stage(metrics, tmp_path / "x.png", "ppo")
