"""The CLI habits users bring from HF/TRL tools: `--help` that lists every config key, `--version`,
`-v/-q` anywhere, shipped recipes by name from any directory, the short form for every stage."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.cli import build_parser, main
from open_instruct.recipe.stages import STAGE_TYPES

REPO = Path(__file__).resolve().parent.parent


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("stage", sorted(STAGE_TYPES))
def test_stage_help_lists_every_config_key_with_type_default_and_meaning(stage, capsys):
    out = _help(capsys, stage)
    cls = STAGE_TYPES[stage].config_cls()
    lines = out.splitlines()
    for f in dataclasses.fields(cls):
        rows = [i for i, ln in enumerate(lines) if ln.split() and ln.split()[0] == f.name]
        assert rows, f"{stage} --help does not list {f.name}"
        i = rows[0]
        assert ", default " in lines[i], lines[i]
        doc = lines[i + 1].strip() if i + 1 < len(lines) else ""
        nxt = doc.split()[0] if doc else ""
        assert doc and nxt not in {g.name for g in dataclasses.fields(cls)}, (
            f"{stage}.{f.name} has no help line"
        )
    assert "--model" in out and "--data" in out and "--output" in out  # the short form for every stage


def test_version_names_the_toolkit_and_its_key_dependencies(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("open-instruct-toolkit", "torch", "transformers", "trl", "vllm", "deepspeed", "ray"):
        assert any(line.startswith(name) for line in out.splitlines()), (name, out)


def test_verbosity_flags_are_accepted_after_the_subcommand_too():
    parser = build_parser()
    assert parser.parse_args(["-v", "recipes"]).verbose is True
    assert parser.parse_args(["recipes", "-q"]).quiet is True
    args = parser.parse_args(["data", "inspect", "mix.yaml", "--tokenizer", "t", "-v"])
    assert args.verbose is True
    assert parser.parse_args(["rewards", "list", "-q"]).quiet is True
    assert parser.parse_args(["sft", "--config", "x.yaml", "-v"]).verbose is True


def test_recipes_lists_every_shipped_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    shipped = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    for name in shipped:
        line = next((ln for ln in out.splitlines() if ln.split() and ln.split()[0] == name), None)
        assert line is not None and len(line.split()) > 3, f"{name} missing or without a description"


def test_a_shipped_recipe_runs_by_name_from_an_empty_directory(tmp_path):
    """`open-instruct run tiny --dry-run` outside the repo: the recipe and its data come from the
    toolkit's shipped copy; a typo in the name is one line with a suggestion."""
    env = dict(os.environ, OPEN_INSTRUCT_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "open_instruct.cli", "run"]
    res = subprocess.run([*cmd, "tiny", "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "recipe tiny" in res.stdout and "data_mixes/samples/sft_train.jsonl" in res.stdout
    assert not list(tmp_path.iterdir()), "a dry run wrote into the current directory"
    res = subprocess.run([*cmd, "tinny", "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "did you mean 'tiny'?" in res.stderr


def test_sft_short_form_trains_and_publishes(tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    data = REPO / "data_mixes" / "samples" / "sft_eval.jsonl"
    code = main(
        [
            "sft",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--output",
            str(out),
            "--set",
            "max_train_steps=2",
            "--set",
            "per_device_train_batch_size=4",
            "--set",
            "chat_template=tulu",
            "-q",
        ]
    )
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "model_manifest.json").is_file()
    # published files are readable by the group (0644 under the usual umask), whatever wrote them
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir() if f.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~_umask())}, modes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
