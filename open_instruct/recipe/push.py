"""Sharing a published model on the Hugging Face Hub, after it is published and verified:

    open-instruct push runs/demo/dpo --repo-id me/tiny-dpo [--private] [--revision v1]
    open-instruct push runs/demo --repo-id me/tiny        (a recipe run dir: its final stage)
    push_to_hub: true / hub_model_id: me/x                 (a stage config: TRL's names)
    push_to_hub: {repo_id: me/x, private: true}            (a recipe: its final model)

What goes up: the files model_manifest.json lists (weights, config, tokenizer; a LoRA stage's adapter
and its merged/ weights when published), the manifest itself, a model card (README.md, recipe/card.py,
also written next to the local model) and the run's records (lineage.json, resolved_config.yaml,
train_summary.json, eval.json, heldout_eval.json, metrics.jsonl, plots). Checkpoints, caches and
generated data stay local. A failed push is one line saying the local model is intact and how to retry.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from ..io import atomic_write_text, read_json
from ..model.hub import HubTarget, PushError, upload
from ..train.checkpoint import MODEL_MANIFEST, verify_model
from .card import model_card

log = logging.getLogger(__name__)

RECORDS = (
    "README.md",
    "lineage.json",
    "resolved_config.yaml",
    "train_summary.json",
    "eval.json",
    "heldout_eval.json",
    "metrics.jsonl",
)


def upload_files(stage_dir: Path) -> list[str]:
    """The files of `stage_dir` a push uploads (relative paths, sorted)."""
    manifest = read_json(stage_dir / MODEL_MANIFEST) or {}
    files = set(manifest.get("files", {})) | {MODEL_MANIFEST}
    files |= {name for name in RECORDS if (stage_dir / name).is_file()}
    files |= {p.name for p in stage_dir.glob("*.png")}
    return sorted(files)


def push_model(stage_dir: str | Path, target: HubTarget) -> str:
    """Verifies the published model in `stage_dir`, writes its card, uploads it. Returns the commit URL."""
    stage_dir = Path(stage_dir)
    target.validate("push")
    digest = verify_model(stage_dir)
    if digest is None:
        raise PushError(
            f"{stage_dir}: no intact published model (model_manifest.json missing, or a file does not match "
            f"it); nothing pushed"
        )
    atomic_write_text(stage_dir / "README.md", model_card(stage_dir, target.repo_id, target.revision))
    files = upload_files(stage_dir)
    where = f"{target.repo_id}" + (f"@{target.revision}" if target.revision else "")
    _say(f"pushing {stage_dir} ({len(files)} files, model digest {digest}) to the hub: {where}")
    url = upload(
        stage_dir, target, files, commit_message=f"open-instruct: {stage_dir.name} (model digest {digest})"
    )
    _say(f"pushed {stage_dir} -> {url}")
    return url


def _say(msg: str) -> None:
    print(f"[open-instruct] {msg}", flush=True)


def stage_target(cfg, default_name: str) -> HubTarget:
    """A stage config's TRL-style keys as a HubTarget (`default_name` when hub_model_id is null)."""
    return HubTarget(cfg.hub_model_id or default_name, cfg.hub_private_repo, cfg.hub_revision)


def push_recipe(plan) -> list[str]:
    """After a recipe run: every stage whose config says push_to_hub, then the recipe's final model
    (`push_to_hub:` at the recipe's top level). A stage's repo defaults to <recipe>-<stage>."""
    urls = []
    for sp in plan.stages:
        if getattr(sp.cfg, "push_to_hub", False):
            urls.append(push_model(sp.out, stage_target(sp.cfg, f"{plan.recipe.name}-{sp.name}")))
    if plan.recipe.push_to_hub is not None:
        urls.append(push_model(plan.stages[-1].out, plan.recipe.push_to_hub))
    return urls


# ----------------------------------------------------------------------------- commands


def stage_command(args) -> int:
    """`open-instruct sft|dpo|rlvr`: runs the stage, then (process 0) pushes when its config says so.
    A rerun of a finished stage trains nothing and pushes again: the way to retry a failed push."""
    import importlib

    from ..config import load_config
    from ..logs import use_log_dir
    from ..train.config import short_form
    from .stages import STAGE_TYPES

    st = STAGE_TYPES[args.command]
    cfg = None
    if args.config or short_form(args) or args.overrides:  # else the stage command says what to give
        cfg = load_config(
            st.config_cls(), args.config, args.overrides or [], on_top=short_form(args), where=args.command
        )
        cfg.check_machine(str(args.config or args.command))  # named as load_config names it; before any write
        use_log_dir(Path(cfg.output_dir) / "logs")  # other libraries' logs (a recipe's run dir wins)
        if cfg.push_to_hub and not _has_token():
            log.warning(
                "push_to_hub: no Hugging Face token here (`hf auth login` or HF_TOKEN); the push after "
                "training will fail and can be retried with `open-instruct push`"
            )
    module, fn = st.command.split(":")
    code = getattr(importlib.import_module(module), fn)(args)
    if cfg is not None and cfg.push_to_hub and int(os.environ.get("RANK", "0")) == 0:
        push_model(cfg.output_dir, stage_target(cfg, Path(cfg.output_dir).name))
    return code


def _has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def resolve_model_dir(path: Path) -> Path:
    """A published stage dir as is; a recipe run dir (recipe.yaml, no model): its final stage's dir."""
    if (path / MODEL_MANIFEST).is_file() or not (path / "recipe.yaml").is_file():
        return path
    stages = (yaml.safe_load((path / "recipe.yaml").read_text()) or {}).get("stages") or []
    names = [s.get("name") or s.get("type") for s in stages if isinstance(s, dict)]
    return path / names[-1] if names else path


def push_command(args) -> int:
    target = HubTarget(args.repo_id, True if args.private else None, args.revision)
    push_model(resolve_model_dir(Path(args.model_dir)), target)
    return 0
