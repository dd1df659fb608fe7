"""Bad inputs end in one line, never a traceback or a dead wait: model paths that are not models (every
subcommand), hub ids without network (one try), output dirs that are files, `eval` flags out of range
(named as flags, before any engine), `tiny --out` into someone else's files, a held-out eval longer than
the model's positions; and a real Ctrl-C of `open-instruct sft` (exit 130, one `interrupted:` line).

The census of many more bad inputs through the real CLI is scripts/bad_inputs.py."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from open_instruct.cli import main
from open_instruct.model import source

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_mixes" / "samples"


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, the last non-empty stderr line) of `open-instruct argv`, in this process."""
    capsys.readouterr()
    code = main(argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return code, lines[-1] if lines else ""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def files(tmp_path, tiny_model_dir):
    """A stage config per command pointing at the tiny model and a few sample rows, plus the bad paths."""
    f = tmp_path / "in"
    f.mkdir()
    (f / "no_config").mkdir()
    (f / "no_config" / "README.md").write_text("not a model\n")
    (f / "afile").write_text("a file\n")
    for name, src in (("sft", "sft_train"), ("pref", "preference_train"), ("rlvr", "rlvr_train")):
        (f / f"{name}.jsonl").write_text(
            "\n".join(SAMPLES.joinpath(f"{src}.jsonl").read_text().splitlines()[:16])
        )
    common = {"model_name_or_path": str(tiny_model_dir), "dtype": "float32", "seed": 0}
    configs = {
        "sft": {**common, "dataset_mix": str(f / "sft.jsonl"), "max_seq_length": 128, "max_train_steps": 1},
        "dpo": {**common, "dataset_mix": str(f / "pref.jsonl"), "max_seq_length": 128, "max_train_steps": 1},
        "rlvr": {
            **common,
            "dataset_mix": str(f / "rlvr.jsonl"),
            "num_unique_prompts_rollout": 4,
            "num_samples_per_prompt_rollout": 2,
            "per_device_train_batch_size": 8,
            "total_episodes": 8,
            "max_prompt_length": 64,
            "response_length": 8,
        },
    }
    for cmd, cfg in configs.items():
        (f / f"{cmd}.yaml").write_text(json.dumps({**cfg, "output_dir": str(tmp_path / f"out_{cmd}")}))
    return f


def stage(cmd: str, f: Path, *sets: str) -> list[str]:
    argv = [cmd, "--config", str(f / f"{cmd}.yaml")]
    for s in sets:
        argv += ["--set", s]
    return argv


# ---------------------------------------------------------------- 1. a model path that is not a model


@pytest.mark.parametrize("cmd", ["sft", "dpo", "rlvr"])
@pytest.mark.parametrize(
    "bad, expected",
    [
        ("no_config", r"cannot read \S+/no_config: no config.json or adapter_config.json in it"),
        ("nowhere/x/y", r"\S+/nowhere/x/y is neither a local model dir nor a hub id \(org/name\)"),
        ("afile", r"cannot read \S+/afile: a file, not a model directory"),
    ],
)
def test_stage_model_path_is_one_line(cmd, bad, expected, files, capsys):
    code, line = cli(stage(cmd, files, f"model_name_or_path={files / bad}"), capsys)
    assert code == 2
    assert re_match(rf"error: {cmd} model_name_or_path: {expected}", line)


def test_stage_reference_and_tokenizer_paths_are_checked(files, capsys):
    code, line = cli(stage("dpo", files, f"ref_model_name_or_path={files / 'gone'}"), capsys)
    assert code == 2 and line.startswith("error: dpo ref_model_name_or_path: ") and "gone is neither" in line
    code, line = cli(stage("sft", files, f"tokenizer_name_or_path={files / 'no_config'}"), capsys)
    assert code == 2 and line.startswith("error: sft tokenizer_name_or_path: cannot read ")
    assert "no tokenizer_config.json or tokenizer.json" in line


def test_a_model_dir_without_a_tokenizer_is_one_line(files, tiny_model_dir, tmp_path, capsys):
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((tiny_model_dir / name).read_bytes())
    code, line = cli(stage("sft", files, f"model_name_or_path={weights_only}"), capsys)
    assert code == 2 and line.startswith("error: sft model_name_or_path: cannot read ")
    assert "no tokenizer" in line


def test_a_broken_model_dir_is_one_line_before_loading(files, tiny_model_dir, tmp_path, capsys):
    """What an interrupted copy or download leaves: caught when the stage starts, not minutes into
    loading, each named by its file."""
    import shutil

    def copy(name):
        d = tmp_path / name
        shutil.copytree(tiny_model_dir, d)
        return d

    truncated = copy("truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, line = cli(stage("sft", files, f"model_name_or_path={truncated}"), capsys)
    assert code == 2 and line == (
        f"error: sft model_name_or_path: {weights}: broken weights file (Error while deserializing header: "
        f"incomplete metadata, file not fully covered); an unfinished save or copy?"
    )

    bad_config = copy("bad_config")
    (bad_config / "config.json").write_text('{"model_type": "llama", ')
    code, line = cli(stage("dpo", files, f"model_name_or_path={bad_config}"), capsys)
    assert code == 2 and line.startswith(
        f"error: dpo model_name_or_path: {bad_config / 'config.json'}: not valid JSON (Expecting"
    )

    sharded = copy("sharded")  # an index naming two shards, one of them missing
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    code, line = cli(stage("rlvr", files, f"model_name_or_path={sharded}"), capsys)
    assert code == 2 and line == (
        f"error: rlvr model_name_or_path: {sharded}: model.safetensors.index.json names 2 weight files and "
        f"1 are not there (model-00002-of-00002.safetensors, ...); an unfinished download or copy?"
    )


def test_a_model_dir_without_weights_is_one_line(files, tiny_model_dir, tmp_path, capsys):
    import shutil

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    code, line = cli(stage("dpo", files, f"model_name_or_path={no_weights}"), capsys)
    assert code == 2 and line == (
        f"error: dpo model_name_or_path: cannot read {no_weights}: a config but no weights in it "
        f"(*.safetensors); an unfinished save or copy?"
    )


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("no_config", r"cannot read \S+/no_config: no config.json"),
        ("nowhere/x/y", r"\S+/nowhere/x/y is neither a local model dir nor a hub id"),
        ("afile", r"cannot read \S+/afile: a file, not a model directory"),
    ],
)
def test_eval_model_path_is_one_line(bad, expected, files, capsys):
    code, line = cli(["eval", "--model", str(files / bad), "--data", str(files / "rlvr.jsonl")], capsys)
    assert code == 2 and re_match(rf"error: eval --model: {expected}", line)


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("no_config", r"cannot read \S+/no_config: no tokenizer_config.json or tokenizer.json"),
        ("nowhere/x/y", r"\S+/nowhere/x/y is neither a local tokenizer dir nor a hub id"),
        ("afile", r"cannot read \S+/afile: a file, not a tokenizer directory"),
    ],
)
def test_data_inspect_tokenizer_path_is_one_line(bad, expected, files, capsys):
    code, line = cli(["data", "inspect", str(files / "sft.jsonl"), "--tokenizer", str(files / bad)], capsys)
    assert code == 2 and re_match(rf"error: data inspect --tokenizer: {expected}", line)


@pytest.mark.parametrize(
    "bad, expected",
    [("no_config", r"\S+/no_config has no config.json"), ("nowhere/x/y", r"\S+/nowhere/x/y is neither")],
)
def test_run_base_model_path_is_one_line(bad, expected, files, tmp_path, capsys):
    recipe = {
        "name": "t",
        "output_dir": str(tmp_path / "run"),
        "base_model": str(files / bad),
        "stages": [{"name": "sft", "type": "sft", "dataset_mix": str(files / "sft.jsonl")}],
    }
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    code, line = cli(["run", str(tmp_path / "r.yaml")], capsys)
    assert code == 2 and re_match(rf"error: \S+r.yaml.base_model: {expected}", line)


def test_hub_id_without_network_is_one_try_and_one_line(files, tmp_path):
    """A real subprocess: HF_HUB_OFFLINE unset (conftest sets it), the hub endpoint a closed local port.
    from_pretrained would retry for ~50 s ("Retrying in 1s [Retry 1/5]" ...); the check asks once."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf_home"))
    res = subprocess.run(
        [sys.executable, "-m", "open_instruct.cli", *stage("sft", files, "model_name_or_path=org/name")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert res.returncode == 2, res.stderr[-2000:]
    assert last.startswith(
        "error: sft model_name_or_path: cannot reach the hub for org/name (no network?); "
        "use a local dir, or HF_HUB_OFFLINE=1 with a cached copy"
    )
    assert "Retrying" not in res.stderr and "Traceback" not in res.stderr


@pytest.fixture
def fake_hub(monkeypatch):
    """A local HTTP server answering HEAD requests like the hub does (status + X-Error-Code), with
    huggingface_hub pointed at it and online: the hub's answers without the network."""
    from huggingface_hub import constants

    answers = {
        "org/there": (200, {}),
        "org/missing": (404, {"X-Error-Code": "RepoNotFound"}),
        "org/gated": (403, {"X-Error-Code": "GatedRepo"}),
        "org/adapter": (404, {"X-Error-Code": "EntryNotFound"}),
        "org/broken": (500, {}),
    }
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            repo = "/".join(self.path.strip("/").split("/")[:2])
            status, headers = answers.get(repo, (404, {"X-Error-Code": "RepoNotFound"}))
            self.send_response(status)
            for k, v in {
                "ETag": '"abc"',
                "X-Repo-Commit": "0" * 40,
                "Content-Length": "2",
                **headers,
            }.items():
                self.send_header(k, v)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets at import
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    source._hub_problem.cache_clear()
    yield seen
    server.shutdown()
    source._hub_problem.cache_clear()


def test_hub_answers_are_one_line_each(fake_hub):
    from open_instruct.errors import ConfigError

    source.check_model_source("org/there", "sft model_name_or_path")
    source.check_model_source("org/adapter", "sft model_name_or_path")  # a repo without config.json
    for repo, expected in (
        ("org/missing", "org/missing is no local dir, and the hub has no model org/missing"),
        ("org/gated", "org/gated is a gated hub model"),
        ("org/broken", "the hub answered org/broken with an error"),
    ):
        with pytest.raises(ConfigError) as info:
            source.check_model_source(repo, "dpo model_name_or_path")
        assert str(info.value).startswith(f"dpo model_name_or_path: {expected}") and "\n" not in str(
            info.value
        )
    assert len([p for p in fake_hub if "org/broken" in p]) == 1  # asked once: no retries on a 5xx


def test_offline_hub_id_not_in_the_cache_is_one_line(files, capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    source._hub_problem.cache_clear()
    code, line = cli(["eval", "--model", "org/name", "--data", str(files / "rlvr.jsonl")], capsys)
    assert code == 2 and line.startswith(
        "error: eval --model: org/name is no local dir, and as a hub id it is "
    )
    assert "HF_HUB_OFFLINE is set" in line
    source._hub_problem.cache_clear()


def test_mistyped_relative_model_dir_is_not_taken_for_a_hub_id(
    files, capsys, tmp_path, monkeypatch, tiny_model_dir
):
    """`runs/sfx` for `runs/sft` has a hub id's shape; the message says which local dir was meant."""
    import shutil

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "sft")
    monkeypatch.chdir(tmp_path)
    source._hub_problem.cache_clear()
    code, line = cli(["eval", "--model", "runs/sfx", "--data", str(files / "rlvr.jsonl")], capsys)
    assert code == 2 and line.startswith(
        "error: eval --model: no local dir runs/sfx (did you mean runs/sft?); as a hub id: runs/sfx is "
    ), line
    code, line = cli(["eval", "--model", "runs/zzz", "--data", str(files / "rlvr.jsonl")], capsys)
    assert code == 2 and "no local dir runs/zzz (runs/ has no zzz); as a hub id:" in line, line
    source._hub_problem.cache_clear()


# ---------------------------------------------------------------- 2. an output dir that is a file


@pytest.mark.parametrize("cmd", ["sft", "dpo", "rlvr"])
def test_stage_output_dir_is_a_file(cmd, files, capsys):
    code, line = cli(stage(cmd, files, f"output_dir={files / 'afile'}"), capsys)
    assert code == 2 and re_match(
        r"error: \S+\.yaml\.output_dir: \S+/afile is a file; give a directory", line
    )
    code, line = cli(stage(cmd, files, f"output_dir={files / 'afile' / 'run'}"), capsys)
    assert code == 2 and re_match(
        r"error: \S+\.output_dir: \S+/afile is a file \(a parent of \S+/afile/run\)", line
    )


def test_run_output_is_a_file(files, capsys):
    code, line = cli(["run", "tiny", "--output", str(files / "afile")], capsys)
    assert code == 2 and "the output dir" in line and "afile is a file" in line


# ---------------------------------------------------------------- 3. eval flags, tiny --out


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--limit", "-1"], "eval --limit: must be >= 1 (leave it out for all prompts), got -1"),
        (["--limit", "0"], "eval --limit: must be >= 1 (leave it out for all prompts), got 0"),
        (["--samples", "0"], "eval --samples: must be >= 1, got 0"),
        (["--max-tokens", "0"], "eval --max-tokens: must be >= 1, got 0"),
        (["--temperature", "-0.5"], "eval --temperature: must be >= 0, got -0.5"),
        (
            ["--samples", "4", "--temperature", "0"],
            "eval --temperature: 0 (greedy) gives 4 identical samples",
        ),
    ],
)
def test_eval_flags_are_named_as_flags_before_anything_loads(flags, expected, tmp_path, capsys):
    # the model does not exist: the flag's error comes first, so nothing (model, Ray, vLLM) was touched
    argv = ["eval", "--model", str(tmp_path / "no_model"), "--data", str(tmp_path / "no_data.jsonl"), *flags]
    code, line = cli(argv, capsys)
    assert (code, line) == (2, f"error: {expected}")


def test_tiny_out_refuses_files_and_foreign_dirs(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, line = cli(["tiny", "--out", str(tmp_path / "afile")], capsys)
    assert code == 2 and line == f"error: tiny --out: {tmp_path / 'afile'} is a file; give a directory"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    code, line = cli(["tiny", "--out", str(notes)], capsys)
    assert code == 2 and line == (
        f"error: tiny --out: {notes} is a non-empty directory that holds no model; give a new or empty directory"
    )
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]  # nothing written among the user's files
    code, line = cli(["tiny", "--out", str(tmp_path / "m"), "--layers", "0"], capsys)
    assert code == 2 and line == "error: tiny: layers must be >= 1, got 0"


# ---------------------------------------------------------------- 4. held-out eval past the positions


def test_recipe_eval_budget_past_the_context_is_refused_at_the_first_eval(files, tmp_path, capsys):
    """A `tiny:` base (512 positions) is built at run time; an eval whose response budget alone does not
    fit is refused at its first evaluation (the base), before any engine or stage starts."""
    recipe = {
        "name": "t",
        "output_dir": str(tmp_path / "run"),
        "base_model": {"tiny": {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "ffn": 64}},
        "defaults": {"dtype": "float32", "max_seq_length": 128, "max_train_steps": 1},
        "eval": {
            "dataset_mix": str(files / "rlvr.jsonl"),
            "max_tokens": 600,
            "rollout": {"multiprocess_engine": False},
        },
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset_mix": str(files / "sft.jsonl"),
                "per_device_train_batch_size": 4,
            }
        ],
    }
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    code, line = cli(["run", str(tmp_path / "r.yaml")], capsys)
    assert code == 2
    assert re_match(
        r"error: eval.max_tokens: 600 leaves no room for a prompt in \S+/base's 512-token context", line
    )
    assert not (tmp_path / "run" / "sft").exists()  # no stage started


def test_heldout_eval_caps_the_prompt_budget_to_the_context(tiny_model_dir, files, caplog):
    """max_prompt_length 2048 + max_tokens 8 > 512 positions: the engine gets 512 (504 + 8), prompts are
    capped with a log line, and the evaluation runs (before: vLLM refused max_model_len 2056)."""
    from open_instruct.generation.evaluate import EvalSpec
    from open_instruct.generation.heldout import EvalSession

    spec = EvalSpec(
        dataset_mix=str(files / "rlvr.jsonl"),
        max_tokens=8,
        limit=2,
        max_prompt_length=2048,
        rollout={"multiprocess_engine": False, "kv_cache_gib": 0.25},
    )
    session = EvalSession(spec, str(files / "rlvr.jsonl"))
    try:
        with caplog.at_level(logging.INFO):
            res = session.evaluate(str(tiny_model_dir))
        assert session.group.cfg.max_model_len == 512
    finally:
        session.close()
    assert len(res.per_prompt) == 2
    assert "eval model: prompts capped at 504 tokens (512-token context)" in caplog.text


def test_rlvr_prompt_and_response_past_the_context_is_one_line(files, capsys):
    """RLVR's engines hold max_prompt_length + response_length; past the model's positions vLLM refused
    the engine with a validation traceback after Ray and the engines had started (~2 min here)."""
    code, line = cli(stage("rlvr", files, "max_prompt_length=1024"), capsys)
    assert code == 2
    assert re_match(
        r"error: rlvr max_prompt_length: 1024 \+ response_length 8 exceed the 512 positions of ", line
    )


# ---------------------------------------------------------------- a real Ctrl-C


def test_ctrl_c_of_sft_is_exit_130_and_one_line(files, tmp_path):
    out = tmp_path / "sft_run"
    argv = stage("sft", files, f"output_dir={out}", "max_train_steps=400", "per_device_train_batch_size=2")
    env = {**os.environ, "OPEN_INSTRUCT_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "open_instruct.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.time() + 300
        while not (metrics.is_file() and metrics.read_text().strip()) and proc.poll() is None:
            assert time.time() < deadline, "no training step logged"
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 130, stderr[-2000:]
    assert re_match(rf"interrupted: sft interrupted at step \d+/400 in {out}: no checkpoint yet", lines[-1])
    assert "Traceback" not in stderr


def re_match(pattern: str, line: str) -> bool:
    import re

    assert re.match(pattern, line), f"{line!r} does not match {pattern!r}"
    return True
