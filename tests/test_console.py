"""What a run prints: our own lines on the console, the start-up logs of vLLM, Ray, DeepSpeed and
transformers in <output>/logs/ (open_instruct/logs.py), and all of it on the console again with -v."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EVAL_MIX = REPO / "data_mixes" / "tiny_rlvr_eval.yaml"

# lines seen on the console of a run before logs.py (an `open-instruct run tiny`)
VLLM_LINE = re.compile(r"(INFO|WARNING) \d\d-\d\d [\d:]+ \[[\w.]+:\d+\]")  # vLLM's own log format
RAY_START = re.compile(r"Started a local Ray instance|Connected to Ray cluster")
ACTOR_PREFIX = "(RolloutEngine pid="  # Ray streaming an actor's output to the driver
LIBRARY_NOISE = ("Loading weights", "Writing model shards", "real_accelerator")


def cli(args: list[str], cwd: Path, timeout: float, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    for key in ("OPEN_INSTRUCT_VERBOSE", "OPEN_INSTRUCT_LOG_DIR", "OPEN_INSTRUCT_LOG_NAME"):
        env.pop(key, None)  # the test decides; a parent's choice would leak in
    env["OPEN_INSTRUCT_NO_PROGRESS"] = "0"  # the console as a user sees it: progress bars too
    return subprocess.run(
        [sys.executable, "-m", "open_instruct.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def console(res: subprocess.CompletedProcess) -> str:
    return res.stdout + res.stderr


def read_logs(d: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted(d.glob("*.log"))}


# ---- the console rule and the file, in a child process (no vLLM) -----------------------------------


def run_python(code: str, tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPEN_INSTRUCT_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


ROUTING = """
    import logging, sys, warnings
    from open_instruct import logs
    logs.setup(verbose_flag="-v" in sys.argv, quiet=False, name="sft")
    logging.getLogger("open_instruct.train.sft").info("ours before the dir")
    logging.getLogger("ray._private.worker").info("theirs before the dir")
    logs.use_log_dir("out/logs")
    logging.getLogger("open_instruct.train.sft").info("ours after")
    logging.getLogger("accelerate.state").info("theirs after")
    logging.getLogger("accelerate.state").warning("their warning")
    logging.getLogger("torch.distributed").error("their error")
    ds = logging.getLogger("DeepSpeed")  # as `import deepspeed` sets its logger up: own stdout handler
    ds.propagate = False
    ds.addHandler(logging.StreamHandler(sys.stdout))
    ds.warning("deepspeed's own handler")
    warnings.warn("a library's FutureWarning", FutureWarning)
"""


def test_console_keeps_our_lines_and_errors_the_file_gets_everything(tmp_path):
    res = run_python(ROUTING, tmp_path)
    assert res.returncode == 0, res.stderr
    out = console(res)
    assert "ours before the dir" in out and "ours after" in out
    assert "their error" in out
    for hidden in (
        "theirs before the dir",
        "theirs after",
        "their warning",
        "deepspeed's own",
        "FutureWarning",
    ):
        assert hidden not in out, hidden
    text = (tmp_path / "out" / "logs" / "sft.log").read_text()
    for line in (
        "ours before the dir",
        "theirs before the dir",
        "ours after",
        "theirs after",
        "their warning",
        "their error",
        "deepspeed's own handler",
        "a library's FutureWarning",
    ):
        assert line in text, line
    # the records logged before the dir was known come first, in order
    assert text.index("theirs before the dir") < text.index("ours after")


def test_verbose_puts_every_library_line_on_the_console(tmp_path):
    res = run_python(ROUTING, tmp_path, OPEN_INSTRUCT_VERBOSE="1")
    assert res.returncode == 0, res.stderr
    out = console(res)
    for line in ("theirs before the dir", "theirs after", "their warning", "their error", "FutureWarning"):
        assert line in out, line
    assert "theirs after" in (tmp_path / "out" / "logs" / "sft.log").read_text()  # the file as well


def test_a_recipe_log_dir_wins_over_a_stage_s(tmp_path):
    code = """
        import logging
        from open_instruct import logs
        logs.setup(False, False, "sft")
        print(logs.use_log_dir("stage/logs"))
        logging.getLogger("accelerate.state").info("into the recipe's dir")
    """
    res = run_python(
        code,
        tmp_path,
        OPEN_INSTRUCT_LOG_DIR=str(tmp_path / "run" / "logs"),
        OPEN_INSTRUCT_LOG_NAME="stage-sft",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "run" / "logs")
    assert "into the recipe's dir" in (tmp_path / "run" / "logs" / "stage-sft.log").read_text()
    assert not (tmp_path / "stage").exists()


def test_a_library_user_keeps_the_libraries_defaults(tmp_path):
    """Without the CLI's setup: no log dir, no engine redirection, nothing adopted."""
    code = """
        from open_instruct import logs
        print(logs.use_log_dir("out/logs"), logs.engine_log_dir())
    """
    res = run_python(code, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["None", "None"]
    assert not (tmp_path / "out").exists()


def test_engines_of_a_command_without_an_output_log_to_a_named_temp_dir(tmp_path):
    code = """
        from open_instruct import logs
        logs.setup(False, False, "eval")
        print(logs.engine_log_dir())
    """
    res = run_python(code, tmp_path)
    assert res.returncode == 0, res.stderr
    d = Path(res.stdout.strip())
    try:
        assert d.name.startswith("open-instruct-logs-") and (d / "eval.log").is_file()
        assert f"vLLM/Ray logs: {d} (-v shows them here)" in res.stderr  # where to look, on the console
    finally:
        shutil.rmtree(d, ignore_errors=True)
    res = run_python(code, tmp_path, OPEN_INSTRUCT_VERBOSE="1")
    assert res.stdout.strip() == "None"  # -v: engines print to the console through Ray


def test_redirected_output_includes_child_processes(tmp_path):
    """An engine actor's descriptors go to its file; vLLM's engine-core processes inherit them."""
    code = """
        import os, subprocess, sys
        from open_instruct.logs import redirect_output
        print("before", flush=True)
        redirect_output("logs/engine-0.log", "engine 0")
        print("python stdout", flush=True)
        print("python stderr", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'child stderr\\\\n')"], check=True)
    """
    res = run_python(code, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "before\n" and res.stderr == ""
    text = (tmp_path / "logs" / "engine-0.log").read_text()
    assert text.startswith("==== ") and "engine 0" in text.splitlines()[0]
    assert ["python stdout", "python stderr", "child stderr"] == text.splitlines()[1:]


# ---- a real stage without vLLM: transformers' bars and DeepSpeed's warning ------------------------------


def test_sft_console_has_no_library_start_up_lines(tiny_model_dir, samples_dir, tmp_path):
    out = tmp_path / "sft"
    args = [
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(samples_dir / "sft_train.jsonl"),
        "--output",
        str(out),
    ]
    args += [
        "--set",
        "max_train_steps=2",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "chat_template=tulu",
    ]
    res = cli(args, tmp_path, timeout=300)
    assert res.returncode == 0, console(res)[-3000:]
    text = console(res)
    for noise in LIBRARY_NOISE:
        assert noise not in text, noise
    assert "sft:" in text and "2/2" in text  # the stage's progress bar
    logs = read_logs(out / "logs")
    assert set(logs) == {"sft.log"}
    assert "open_instruct" in logs["sft.log"]  # our own lines are in the file too


# ---- a real vLLM engine in Ray: `open-instruct eval` -----------------------------------------------------


# the engine in the actor's own process (no engine-core subprocess): it starts in ~3 s instead of ~20 s;
# the actor inherits it from the local Ray the command starts
FAST_ENGINE = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def _eval_args(model: Path, out: Path) -> list[str]:
    return ["eval", "--model", str(model), "--data", str(EVAL_MIX), "--limit", "4", "--max-tokens", "8"] + [
        "--output",
        str(out / "results.jsonl"),
    ]


@pytest.mark.slow
def test_eval_console_has_no_vllm_or_ray_start_up_lines(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    res = cli(_eval_args(tiny_model_dir, out), tmp_path, timeout=600, **FAST_ENGINE)
    assert res.returncode == 0, console(res)[-3000:]
    text = console(res)
    assert not VLLM_LINE.search(text), VLLM_LINE.search(text).group(0)
    assert not RAY_START.search(text)
    assert ACTOR_PREFIX not in text
    assert "eval of" in text and "per-prompt results:" in text  # the result is still printed
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    logs = read_logs(out / "logs")
    assert {"eval.log", "engine-0.log"} <= set(logs), sorted(logs)
    assert RAY_START.search(logs["eval.log"])
    engine = logs["engine-0.log"]
    assert engine.startswith("==== ") and str(tiny_model_dir) in engine.splitlines()[0]
    assert VLLM_LINE.search(engine) and "Resolved architecture" in engine


# -v bringing library lines back: test_verbose_puts_every_library_line_on_the_console (the same switch
# keeps the engines' output on the console: group.py passes no log_dir under -v).


# ---- a recipe stage launched as two processes (torchrun, DeepSpeed ZeRO-2) ---------------------------


@pytest.mark.slow
def test_launched_stage_console_shows_rank_0_and_logs_every_rank(tmp_path):
    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        name: two
        description: a two-process SFT stage
        output_dir: {tmp_path / "run"}
        base_model: {{tiny: {{arch: llama, seed: 0}}}}
        defaults: {{chat_template: tulu, dtype: float32, max_seq_length: 128}}
        stages:
          - {{name: sft, type: sft, dataset_mix: {REPO / "data_mixes" / "tiny_sft.yaml"}, max_train_steps: 2,
              per_device_train_batch_size: 4, total_batch_size: 8, num_processes: 2, deepspeed: zero2}}
        """)
    )
    res = cli(["run", str(recipe)], tmp_path, timeout=600)
    assert res.returncode == 0, console(res)[-3000:]
    text = console(res)
    for noise in (*LIBRARY_NOISE, "built successfully", "OMP_NUM_THREADS", "FutureWarning"):
        assert noise not in text, noise
    logs_dir = tmp_path / "run" / "logs"
    assert f"[recipe] logs of vLLM, Ray, DeepSpeed and the stages: {logs_dir}" in text
    assert text.count("chat template: tulu") == 1  # rank 0's INFO line; rank 1's is in the file
    assert "sft:" in text and "2/2" in text
    stage = read_logs(logs_dir)["stage-sft.log"]
    for rank in (0, 1):
        assert f"[rank {rank}]" in stage and "Setting accelerator to CPU" in stage
    assert stage.count("chat template: tulu") == 2
    assert "deepspeed_shm_comm_op built successfully" in stage
