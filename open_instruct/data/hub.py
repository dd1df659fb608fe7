"""Hub sources of a data mix: loading one at a revision, which commit that revision is (known
offline from the local caches), and a one-line error when it cannot be had.

`datasets.load_dataset(id, subset, split=..., revision=...)` resolves a branch or tag to a commit
online and prepares the data under `HF_DATASETS_CACHE/<org>___<name>/<config>/<version>/<commit>/`.
Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) it serves the newest prepared copy *whatever revision
was asked*, so `load_hub` compares the commit it was served with the one the revision names in the
hub cache (`HF_HUB_CACHE/datasets--<org>--<name>/refs/<revision>`, written when the revision was
downloaded) and refuses a mismatch, or a revision it cannot confirm, instead of training on other
data. The commit is recorded in lineage.json (recipe/lineage.py); the fingerprint that decides
whether a finished stage is reused holds the revision as asked (a moving branch is its name).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from .files import one_line

_SHA = re.compile(r"[0-9a-f]{40}")


def offline() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit `revision` (default: main) names in the local hub cache, without the network; a
    full commit sha names itself. None when this machine never downloaded that revision."""
    rev = revision or "main"
    if _SHA.fullmatch(rev):
        return rev
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "refs" / rev
    try:
        sha = ref.read_text().strip()
    except OSError:
        return None
    return sha if _SHA.fullmatch(sha) else None


def served_commit(ds) -> str | None:
    """The commit a loaded hub dataset was prepared from (its cache directory's name), or None."""
    for f in getattr(ds, "cache_files", None) or []:
        name = Path(f.get("filename", "")).parent.name
        if _SHA.fullmatch(name):
            return name
    return None


def load_hub(src: Any, where: str, name: str):
    """(dataset, commit or None) of hub source `src` (a mixes.SourceSpec) at its revision; every
    failure is a one-line DataError naming the source (`where`, e.g. `mix.yaml sources[0]`)."""
    import datasets

    try:
        ds = datasets.load_dataset(src.hf, src.subset, split=src.split, revision=src.revision)
    except Exception as e:  # noqa: BLE001 - any loader failure is a data problem, one line
        if offline():
            raise DataError(
                f"{where}.hf: {name!r} is not in the local datasets cache and offline mode is on "
                f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); load it once with network access first, "
                f"see docs/data.md 'Offline' ({type(e).__name__}: {one_line(e)})"
            ) from None
        raise DataError(
            f"{where}.hf: could not load {name!r} split {src.split!r} ({type(e).__name__}: {one_line(e)})"
        ) from None
    served = served_commit(ds)
    expected = cached_commit(src.hf, src.revision)
    # Online the load itself resolved the revision; offline datasets may have served another commit.
    if src.revision and offline() and (expected is None or served != expected):
        if expected is None:
            raise DataError(
                f"{where}.revision: offline, cannot tell which commit {src.revision!r} of {src.hf!r} is "
                f"(the hub cache has no refs/{src.revision}); load it once with network access, or give "
                f"the full commit sha"
            )
        raise DataError(
            f"{where}.revision: {src.revision!r} is commit {expected[:12]} but the datasets cache served "
            f"{(served or 'an unknown commit')[:12]} (offline, datasets reads the newest cached copy); load "
            f"{name!r} at this revision once with network access"
        )
    return ds, served or expected
