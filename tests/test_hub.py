"""Sharing results on the Hugging Face Hub, offline: huggingface_hub's HfApi network calls
(create_repo, create_branch, upload_folder) are replaced by a local stand-in that records each call
and copies what upload_folder's own pattern filter selects into a folder per repo and revision. What is
checked: the calls (repo id, private, revision), the uploaded file list, the model card, the order
(the model is published and verified before anything goes up), and the one-line failures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from open_instruct.cli import main as cli_main
from open_instruct.model.hub import PushError
from open_instruct.train.checkpoint import verify_model

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_mixes" / "samples"


class StandInHub:
    """HfApi's repo/branch/upload calls against a local folder: <root>/<repo_id>@<revision>/."""

    def __init__(self, root: Path):
        self.root, self.calls, self.uploads, self.fail = root, [], {}, None

    def install(self, monkeypatch):
        from huggingface_hub import HfApi, RepoUrl
        from huggingface_hub.utils import filter_repo_objects

        hub = self

        def create_repo(api, repo_id, *, private=None, repo_type=None, exist_ok=False, **kw):
            hub.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok}))
            full = (
                repo_id if "/" in repo_id else f"me/{repo_id}"
            )  # a bare name lands in the token's namespace
            return RepoUrl(f"https://huggingface.co/{full}")

        def create_branch(api, repo_id, *, branch, exist_ok=False, **kw):
            hub.calls.append(("create_branch", repo_id, {"branch": branch, "exist_ok": exist_ok}))

        def upload_folder(api, *, repo_id, folder_path, revision=None, allow_patterns=None, **kw):
            hub.calls.append(
                ("upload_folder", repo_id, {"revision": revision, "message": kw.get("commit_message")})
            )
            if hub.fail is not None:
                raise hub.fail
            folder = Path(folder_path)
            assert verify_model(folder) is not None, "pushed before the model was published and verified"
            local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            chosen = sorted(filter_repo_objects(local, allow_patterns=allow_patterns))
            dest = hub.root / f"{repo_id}@{revision or 'main'}"
            shutil.rmtree(dest, ignore_errors=True)
            for rel in chosen:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / rel, dest / rel)
            hub.uploads[(repo_id, revision)] = chosen
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0123"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        return self

    def card(self, repo_id: str, revision: str | None = None):
        from huggingface_hub import ModelCard

        return ModelCard.load(self.root / f"{repo_id}@{revision or 'main'}" / "README.md")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return StandInHub(tmp_path / "hub").install(monkeypatch)


@pytest.fixture(autouse=True)
def restore_environment():
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


SFT_ARGS = [
    "--set",
    "max_train_steps=2",
    "--set",
    "per_device_train_batch_size=8",
    "--set",
    "max_seq_length=128",
    "--set",
    "dtype=float32",
    "--set",
    "learning_rate=1e-3",
]


@pytest.fixture(scope="module")
def sft_out(tiny_model_dir, tmp_path_factory):
    """A standalone SFT stage, published (no push yet)."""
    out = tmp_path_factory.mktemp("hub_sft") / "tiny-sft"
    args = [
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(SAMPLES / "sft_train.jsonl"),
        "--output",
        str(out),
    ]
    assert cli_main([*args, *SFT_ARGS]) == 0
    return out, args


def test_stage_push_uploads_the_published_model_with_a_card(sft_out, hub):
    """Adding push_to_hub to a finished stage's command trains nothing (the push keys do not change
    the config) and pushes: also the way to retry a failed push."""
    out, args = sft_out
    push = [
        "--set",
        "push_to_hub=true",
        "--set",
        "hub_model_id=me/tiny-sft",
        "--set",
        "hub_private_repo=true",
    ]
    assert cli_main([*args, *SFT_ARGS, *push, "--set", "hub_revision=v1"]) == 0
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1:] == ("me/tiny-sft", {"private": True, "exist_ok": True})
    assert hub.calls[1][1:] == ("me/tiny-sft", {"branch": "v1", "exist_ok": True})
    assert hub.calls[2][2]["revision"] == "v1"

    manifest = json.loads((out / "model_manifest.json").read_text())
    uploaded = set(hub.uploads[("me/tiny-sft", "v1")])
    assert set(manifest["files"]) <= uploaded
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "model_manifest.json",
    } <= uploaded
    assert {"resolved_config.yaml", "train_summary.json", "metrics.jsonl", "sft_curves.png"} <= uploaded
    assert not any(f.startswith(("checkpoints/", ".")) for f in uploaded)
    remote = hub.root / "me/tiny-sft@v1"
    assert (remote / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()

    card = hub.card("me/tiny-sft", "v1")
    assert card.data.library_name == "transformers" and "sft" in card.data.tags
    assert card.data.base_model is None  # a local base is no hub id
    assert f"Post-trained from `{args[2]}`" in card.text
    assert "| learning_rate | 0.001 |" in card.text and "| max_train_steps | 2 |" in card.text
    assert 'revision="v1"' in card.text  # the usage snippet loads what was pushed
    assert (out / "README.md").read_text() == (
        remote / "README.md"
    ).read_text()  # the card is kept locally too
    assert verify_model(out) is not None

    # no hub_model_id: the output dir's name, in the token's namespace (what transformers does)
    hub.calls.clear()
    assert cli_main([*args, *SFT_ARGS, "--set", "push_to_hub=true"]) == 0
    assert hub.calls[0][1] == "tiny-sft" and ("me/tiny-sft", None) in hub.uploads


def test_failed_push_is_one_line_and_says_how_to_retry(sft_out):
    """The real HfApi with the network off (HF_HUB_OFFLINE=1): exit 2, one line, the model intact."""
    out, _ = sft_out
    digest = verify_model(out)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "open_instruct.cli",
            "push",
            str(out),
            "--repo-id",
            "me/x",
            "--revision",
            "v1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line, line
    assert line.startswith(f"error: push of {out} to the hub repo me/x failed (OfflineModeIsEnabled")
    assert line.endswith(
        f"the local model in {out} is intact; retry with: open-instruct push {out} --repo-id me/x --revision v1"
    )
    assert verify_model(out) == digest


def test_push_refuses_what_is_not_a_verified_model(sft_out, hub, tmp_path):
    out, _ = sft_out
    broken = tmp_path / "broken"
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("checkpoints"))
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    for path in (broken, tmp_path / "nothing"):
        with pytest.raises(PushError, match=r"no intact published model .*; nothing pushed$"):
            cli_main_raise(["push", str(path), "--repo-id", "me/x"])
    assert hub.calls == []


def cli_main_raise(argv):
    """Runs a command's handler without the CLI's error printing, to see the exception."""
    from open_instruct.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def test_bad_repo_id_fails_before_training(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    argv = [
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(SAMPLES / "sft_train.jsonl"),
        "--output",
        str(out),
    ]
    assert cli_main([*argv, "--set", "push_to_hub=true", "--set", "hub_model_id=me/bad name"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sft.hub_model_id: 'me/bad name' is not a hub repo id") and "\n" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------- a recipe's final model


def _recipe(tmp_path: Path) -> Path:
    recipe = {
        "name": "hubtest",
        "base_model": {"tiny": {"arch": "llama", "seed": 0}},
        "output_dir": str(tmp_path / "run"),
        "defaults": {"dtype": "float32", "max_seq_length": 128, "seed": 0},
        "eval": None,
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset_mix": {
                    "kind": "sft",
                    "sources": [{"path": str(SAMPLES / "sft_train.jsonl"), "amount": 128}],
                },
                "learning_rate": 2e-3,
                "per_device_train_batch_size": 16,
                "max_train_steps": 3,
            },
            {
                "name": "dpo",
                "type": "dpo",
                "dataset_mix": {
                    "kind": "preference",
                    "sources": [{"path": str(SAMPLES / "preference_train.jsonl"), "amount": 32}],
                },
                "use_lora": True,
                "lora_rank": 4,
                "lora_save_merged": True,
                "loss_type": "dpo",
                "beta": 0.1,
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 8,
                "total_batch_size": 8,
                "max_train_steps": 2,
            },
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _heldout(path: Path, reward: float) -> dict:
    """A held-out result as generation/heldout.py writes it (no vLLM in this test)."""
    summary = {"prompts": 200, "samples_per_prompt": 1, "reward_mean": reward, "gsm8k/pass@1": reward}
    path.write_text(
        json.dumps({"model": str(path.parent), "model_digest": "x", "settings": {}, "summary": summary})
    )
    return summary


def test_recipe_pushes_its_final_model_with_a_card_from_lineage(tmp_path, hub, capsys):
    from open_instruct.recipe.run import run_recipe

    recipe = _recipe(tmp_path)
    run_recipe(recipe)
    run = tmp_path / "run"
    assert hub.calls == []  # nothing asked for
    _heldout(run / "base_eval.json", 0.015)
    _heldout(run / "sft" / "heldout_eval.json", 0.3125)
    _heldout(run / "dpo" / "heldout_eval.json", 0.4375)

    # the same run with pushes asked for: nothing is trained again; a failed push is one line after the report
    push = ["push_to_hub.repo_id=me/tiny-chain", "push_to_hub.private=true", "push_to_hub.revision=v2"]
    hub.fail = OSError("Connection reset by peer")
    with pytest.raises(PushError) as info:
        run_recipe(recipe, overrides=[*push, "sft.push_to_hub=true"])
    msg = str(info.value)
    assert "\n" not in msg and "hub repo me/hubtest-sft failed (OSError: Connection reset by peer)" in msg
    assert msg.endswith(
        f"the local model in {run / 'sft'} is intact; retry with: open-instruct push {run / 'sft'} --repo-id hubtest-sft"
    )
    assert (run / "report.md").is_file()

    hub.fail, hub.calls = None, []
    results = run_recipe(recipe, overrides=[*push, "sft.push_to_hub=true"])
    assert [r.status for r in results[1:]] == ["skipped", "skipped"]
    repos = [(c[1], c[2]) for c in hub.calls if c[0] == "create_repo"]
    assert repos == [
        ("hubtest-sft", {"private": None, "exist_ok": True}),
        ("me/tiny-chain", {"private": True, "exist_ok": True}),
    ]
    assert ("create_branch", "me/tiny-chain", {"branch": "v2", "exist_ok": True}) in hub.calls

    uploaded = set(hub.uploads[("me/tiny-chain", "v2")])
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "merged/model.safetensors",
        "merged/config.json",
    } <= uploaded
    assert {
        "README.md",
        "lineage.json",
        "heldout_eval.json",
        "model_manifest.json",
        "resolved_config.yaml",
    } <= uploaded
    assert not any(f.startswith("checkpoints/") for f in uploaded) and "dpo_reference.json" not in uploaded

    card = hub.card("me/tiny-chain", "v2")
    assert card.data.library_name == "peft"
    assert {"open-instruct", "sft", "dpo", "lora"} <= set(card.data.tags)
    text = card.text
    lineage = {s: json.loads((run / s / "lineage.json").read_text()) for s in ("sft", "dpo")}
    assert f"Post-trained from `{run / 'base'}`" in text and "base → sft (sft) → dpo (dpo)" in text
    assert f"Recipe `hubtest` (sha256 `{lineage['dpo']['recipe']['sha256']}`)" in text
    for s in ("sft", "dpo"):
        data = lineage[s]["data"]["train"]
        assert (
            f"content hash `{data['content_hash']}`" in text
            and f"fingerprint `{data['fingerprint']}`" in text
        )
        assert f"model digest `{lineage[s]['model']['digest']}`" in text
    data_file = lineage["sft"]["data"]["train"]["files"][0]
    assert f"sha256 `{data_file['sha256']}`" in text  # the data file's bytes
    assert "| learning_rate | 0.002 |" in text and "| learning_rate | 0.001 |" in text
    assert "| beta | 0.1 |" in text and "| lora_rank | 4 |" in text
    assert "| model | prompts | samples_per_prompt | reward_mean | gsm8k/pass@1 |" in text
    for name, reward in (("base", 0.015), ("sft", 0.3125), ("dpo", 0.4375)):
        assert f"| {name} | 200 | 1 | {reward:.4g} | {reward:.4g} |" in text
    sft_path = (run / "sft").resolve()
    assert f"LoRA adapter (PEFT) for `{sft_path}` (a local model where it was trained); full merged" in text
    assert 'subfolder="merged", revision="v2"' in text
    import torch

    assert f"- torch {torch.__version__}" in text

    # retry or push again from the run dir: its final stage goes up
    hub.calls = []
    assert cli_main(["push", str(run), "--repo-id", "me/tiny-chain", "--private"]) == 0
    assert hub.calls[0][1:] == ("me/tiny-chain", {"private": True, "exist_ok": True})
    assert ("me/tiny-chain", None) in hub.uploads and "create_branch" not in [c[0] for c in hub.calls]
