"""Uploading a model folder to the Hugging Face Hub with huggingface_hub's own API: `create_repo`
(private or not, existing repos kept), `create_branch` for a revision other than main, then one
`upload_folder` commit of the named files. Credentials are huggingface_hub's (`hf auth login` or
HF_TOKEN). Which files and which card are the caller's business (recipe/push.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, UserError

# the hub's rule for repo ids: [namespace/]name, letters, digits, - _ . ; no -- or .. ; <= 96 chars
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^(?:{_NAME}/)?{_NAME}$")


class PushError(UserError):
    """A push that did not happen; the local model is untouched (the message says how to retry)."""


def check_repo_id(repo_id: str, where: str) -> None:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or len(repo_id) > 96:
        raise ConfigError(
            f"{where}: {repo_id!r} is not a hub repo id (org/name or name: letters, digits, '-', '_', '.')"
        )


@dataclass
class HubTarget:
    """Where a model goes: `repo_id` (org/name, or name for the token's own namespace), `private`
    (null: the hub's default), `revision` (a branch, created when missing; null: main)."""

    repo_id: str = ""  # org/name, or name (the namespace of your token)
    private: bool | None = None  # create the repo private; null: the hub's default for the namespace
    revision: str | None = None  # branch to push to, created from main when missing; null: main

    def validate(self, where: str) -> None:
        if not self.repo_id:
            raise ConfigError(f"{where}.repo_id: required (org/name)")
        check_repo_id(self.repo_id, f"{where}.repo_id")
        if self.revision is not None and not self.revision.strip():
            raise ConfigError(f"{where}.revision: empty; give a branch name or null for main")

    def retry_command(self, folder: str | Path) -> str:
        cmd = f"open-instruct push {folder} --repo-id {self.repo_id}"
        if self.private:
            cmd += " --private"
        if self.revision:
            cmd += f" --revision {self.revision}"
        return cmd


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def upload(folder: Path, target: HubTarget, files: list[str], commit_message: str) -> str:
    """Creates the repo (and branch) and commits `files` (paths relative to `folder`) in one commit.
    Returns the commit URL; any failure is a one-line PushError naming the local copy and the retry."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = target.repo_id
    try:
        repo_id = api.create_repo(repo_id, private=target.private, repo_type="model", exist_ok=True).repo_id
        if target.revision and target.revision != "main":
            api.create_branch(repo_id, branch=target.revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=target.revision,
            allow_patterns=[_literal(f) for f in files],
            commit_message=commit_message,
        )
    except Exception as e:  # noqa: BLE001 - network, auth, hub errors: all end the same way
        raise PushError(
            f"push of {folder} to the hub repo {repo_id} failed ({type(e).__name__}: {_one_line(e)}); the local "
            f"model in {folder} is intact; retry with: {target.retry_command(folder)}"
        ) from None
    return getattr(info, "commit_url", None) or str(info)


def _literal(name: str) -> str:
    """`name` as an fnmatch pattern matching only itself (allow_patterns are patterns)."""
    return re.sub(r"([*?\[])", r"[\1]", name)
