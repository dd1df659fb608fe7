"""Where a model or tokenizer comes from -- a local directory or a hub id -- checked before any heavy work,
each problem one line naming the key or flag it came from.

`from_pretrained` on a bad path fails deep inside transformers (a "sentencepiece" complaint for an
empty dir, a "Repo id must be in the form" for a missing one), and on a hub id without network it
retries for ~50 s (huggingface_hub's backoff: 1+2+4+8+8 s) before failing. Here a hub id costs one
HEAD request for its config.json, with no retry and huggingface_hub's `HF_HUB_ETAG_TIMEOUT` (10 s by
default); with `HF_HUB_OFFLINE=1` it costs none (the local hub cache is looked up instead).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from ..errors import ConfigError

# org/name as a hub id looks (a path that does not exist and has this shape may still be a typo'd
# relative dir: the messages below name both readings)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MODEL_FILES = ("config.json", "adapter_config.json")  # a full checkpoint, or a LoRA stage's adapter
# pickles count as weights here: loading refuses them with its own message (policy.check_safe_weights)
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.fullmatch(value)) and not value.startswith(".")


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_model_source(value: str, field: str, kind: str = "model") -> None:
    """Raises a one-line ConfigError naming `field` unless `value` can be loaded as a `kind` ("model":
    a dir with config.json or a LoRA adapter_config.json; "tokenizer": a dir with tokenizer files), or is
    a hub id that the hub (one request) or, offline, the local hub cache has."""
    p = Path(value).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{field}: cannot read {value}: a file, not a {kind} directory")
        wanted = MODEL_FILES if kind == "model" else TOKENIZER_FILES
        if not any((p / name).is_file() for name in wanted):
            what = "not a Hugging Face model dir" if kind == "model" else "no tokenizer saved there"
            raise ConfigError(f"{field}: cannot read {value}: no {' or '.join(wanted)} in it ({what})")
        if kind == "model":
            if not any(next(p.glob(pattern), None) for pattern in WEIGHT_FILES):
                raise ConfigError(
                    f"{field}: cannot read {value}: a config but no weights in it (*.safetensors); "
                    f"an unfinished save or copy?"
                )
            _check_local_model(p, field)
        return
    if not looks_like_hub_id(value):
        raise ConfigError(f"{field}: {value} is neither a local {kind} dir nor a hub id (org/name)")
    problem = _hub_problem(value, kind)
    if problem:
        raise ConfigError(f"{field}: {_local_hint(p)}{problem}")


def _check_local_model(p: Path, field: str) -> None:
    """The files a load would trip over minutes in, read now: config JSON, every shard a sharded index
    names, and each safetensors header, which must cover its file (a truncated copy fails here)."""
    from safetensors import safe_open

    parsed = {}
    for name in ("config.json", "adapter_config.json", "model.safetensors.index.json"):
        if (p / name).is_file():
            try:
                parsed[name] = json.loads((p / name).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConfigError(f"{field}: {p / name}: not valid JSON ({_one_line(e, 100)})") from None
            if not isinstance(parsed[name], dict):
                raise ConfigError(f"{field}: {p / name}: expected a JSON object")
    index = p / "model.safetensors.index.json"
    if index.name in parsed:
        shards = parsed[index.name].get("weight_map") or {}
        names = sorted(set(shards.values()) if isinstance(shards, dict) else ())
        missing = [n for n in names if not (p / n).is_file()]
        if missing:
            raise ConfigError(
                f"{field}: {p}: {index.name} names {len(names)} weight files and {len(missing)} are not "
                f"there ({missing[0]}, ...); an unfinished download or copy?"
            )
    for f in sorted(p.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError: the file is unusable either way
            raise ConfigError(
                f"{field}: {f}: broken weights file ({_one_line(e, 100)}); an unfinished save or copy?"
            ) from None


def _local_hint(p: Path) -> str:
    """When `org/name` fails as a hub id but `org/` is a local dir, it was most likely a mistyped path."""
    parent = p.parent
    if not parent.is_dir():
        return ""
    import difflib

    names = sorted(c.name for c in parent.iterdir() if c.is_dir())
    close = difflib.get_close_matches(p.name, names, n=1)
    guess = f"did you mean {parent / close[0]}?" if close else f"{parent}/ has no {p.name}"
    return f"no local dir {p} ({guess}); as a hub id: "


@functools.lru_cache(maxsize=64)
def _hub_problem(repo_id: str, kind: str) -> str | None:
    """Why hub id `repo_id` cannot be loaded now (None when it can); asked once per process."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    files = MODEL_FILES if kind == "model" else (*TOKENIZER_FILES, "config.json")
    cached = any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in files)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return None
        return (
            f"{repo_id} is no local dir, and as a hub id it is not in the local hub cache "
            f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE is set; download it once with network "
            f"access, or give a local dir"
        )
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, files[0]), retry_on_errors=False)
    except GatedRepoError:
        return (
            f"{repo_id} is a gated hub model: accept its terms on its hub page, then log in (hf auth login)"
        )
    except RepositoryNotFoundError:
        return (
            f"{repo_id} is no local dir, and the hub has no model {repo_id} (a private one needs "
            f"hf auth login)"
        )
    except EntryNotFoundError:
        return None  # the repo is there without this file (an adapter repo, a tokenizer-only repo)
    except HfHubHTTPError as e:
        return f"the hub answered {repo_id} with an error ({_one_line(e)})"
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeout, proxy: the network
        fix = (
            "a cached copy exists: rerun with HF_HUB_OFFLINE=1"
            if cached
            else "use a local dir, or HF_HUB_OFFLINE=1 with a cached copy"
        )
        return (
            f"cannot reach the hub for {repo_id} (no network?); {fix} "
            f"({type(e).__name__}: {_one_line(e, 100)})"
        )
    return None
