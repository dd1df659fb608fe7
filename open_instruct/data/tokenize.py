"""Tokenisation transforms (SFT, preference, RLVR) and their on-disk cache.

What each transform trains on:
  sft         every assistant turn's content plus the turn's end token (EOS for tulu); all else -100.
              Turns before `prompt_turns` (a TRL prompt-completion row's prompt) are never trained
  preference  the final assistant response of chosen and of rejected; both share the prompt tokens
  rlvr        nothing: the prompt rendered with the generation prompt, for the rollout engine

Assistant spans come from the tokenizer's own chat template, rendered incrementally: the turn's
text starts where `render(messages[:i], add_generation_prompt=True)` ends and stops where
`render(messages[:i+1])` ends (trailing whitespace such as ChatML's newline after `<|im_end|>` is
not trained). Character spans map to tokens with the fast tokenizer's offsets (a token is trained
when its first character is inside a span), so it works for any template that renders prefixes
as prefixes, and any tokenizer, without knowing either's special strings.

Results are cached under `$OPEN_INSTRUCT_CACHE/tokenized/` (default `~/.cache/open_instruct/tokenized/`)
keyed by (data content hash, tokenizer vocab/merges + special tokens, chat template, transform
name + settings); a second call with the same key loads from disk without tokenising.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .rows import check_kind

log = logging.getLogger(__name__)

IGNORE = -100
# Bump when a transform's output changes for the same inputs, to invalidate old caches.
TRANSFORM_VERSION = 1


# ----------------------------------------------------------------------------- rendering


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not tokenizer.chat_template:
        raise ConfigError(
            "the tokenizer has no chat_template (install one with data.templates.install_template)"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_spans(
    tokenizer, messages: list[dict], prompt_turns: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span [start, end) of every assistant turn from
    turn `prompt_turns` on (its content and end-of-turn token)."""
    full = render(tokenizer, messages)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant" or i < prompt_turns:
            continue
        head = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        if i and full.startswith(head):
            start = len(head)
        else:
            # e.g. two assistant turns in a row: the generation prompt is not a prefix; find the content.
            cursor = len(render(tokenizer, messages[:i])) if i else 0
            start = full.find(turn["content"].strip(), cursor)
            if start < 0:
                raise ConfigError(
                    f"chat template: cannot locate assistant turn {i} in the rendered conversation"
                )
        upto = render(tokenizer, messages[: i + 1])
        if not full.startswith(upto):
            raise ConfigError(
                f"chat template: the rendering of the first {i + 1} turns is not a prefix of the "
                f"whole conversation; cannot find what to train on"
            )
        end = len(upto)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return full, spans


def _encode(tokenizer, text: str):
    # Chat templates place BOS themselves; the tokenizer must add nothing.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


def _labels_for(ids: list[int], offsets, spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE] * len(ids)
    k = 0
    for t, (s, _e) in enumerate(offsets):
        while k < len(spans) and s >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= s < spans[k][1]:
            labels[t] = ids[t]
    if labels:
        labels[0] = IGNORE  # batch contract: the first token of a sequence is never a target
    return labels


# ----------------------------------------------------------------------------- per-row transforms


def sft_example(tokenizer, messages: list[dict], max_seq_length: int, prompt_turns: int = 0) -> dict | None:
    """{"input_ids", "labels"} for one conversation, truncated from the right; None if no label
    survives truncation. Assistant turns before `prompt_turns` are context (-100)."""
    text, spans = assistant_spans(tokenizer, messages, prompt_turns)
    ids, offsets = _encode(tokenizer, text)
    labels = _labels_for(ids, offsets, spans)
    ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    if all(x == IGNORE for x in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def _response_tokens(tokenizer, prompt_text: str, conversation: list[dict]) -> tuple[list[int], list[int]]:
    full = render(tokenizer, conversation)
    if not full.startswith(prompt_text):
        raise ConfigError(
            "chat template: the prompt with generation prompt is not a prefix of the full "
            "conversation; cannot split prompt and response"
        )
    response = full[len(prompt_text) :]
    # Tokenised apart from the prompt, so chosen and rejected share the prompt tokens exactly, as at
    # generation time.
    ids, offsets = _encode(tokenizer, response)
    end = len(response.rstrip())
    labels = [i if s < end else IGNORE for i, (s, _e) in zip(ids, offsets)]
    return ids, labels


def preference_example(
    tokenizer, chosen: list[dict], rejected: list[dict], max_seq_length: int
) -> dict | None:
    """{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", "prompt_length"}.

    Labels cover only the final response (+ its end token). Responses are truncated to fit
    `max_seq_length`; None when the prompt alone leaves no room for a response token."""
    prompt_text = render(tokenizer, chosen[:-1], add_generation_prompt=True)
    prompt_ids, _ = _encode(tokenizer, prompt_text)
    room = max_seq_length - len(prompt_ids)
    if room < 1 or not prompt_ids:
        return None
    out: dict[str, Any] = {"prompt_length": len(prompt_ids)}
    for side, conv in (("chosen", chosen), ("rejected", rejected)):
        ids, labels = _response_tokens(tokenizer, prompt_text, conv)
        ids, labels = ids[:room], labels[:room]
        if all(x == IGNORE for x in labels):
            return None
        out[f"{side}_input_ids"] = prompt_ids + ids
        out[f"{side}_labels"] = [IGNORE] * len(prompt_ids) + labels
    return out


def rlvr_example(tokenizer, messages: list[dict], max_prompt_length: int) -> dict | None:
    """{"prompt_input_ids", "prompt"}: the conversation with the generation prompt; None if too long."""
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    ids, _ = _encode(tokenizer, prompt)
    if len(ids) > max_prompt_length:
        return None
    return {"prompt_input_ids": ids, "prompt": prompt}


def needed_length(tokenizer, kind: str, row: dict) -> int | None:
    """The smallest length limit under which `row` survives its transform (max_prompt_length for
    rlvr, max_seq_length otherwise); None when no limit would do (nothing to train on at all)."""
    if kind == "rlvr":
        return len(_encode(tokenizer, render(tokenizer, row["messages"], add_generation_prompt=True))[0])
    if kind == "sft":
        text, spans = assistant_spans(tokenizer, row["messages"], row.get("prompt_turns") or 0)
        ids, offsets = _encode(tokenizer, text)
        labels = _labels_for(ids, offsets, spans)
        return next((t + 1 for t, x in enumerate(labels) if x != IGNORE), None)
    chosen, rejected = row["chosen"], row["rejected"]
    prompt_text = render(tokenizer, chosen[:-1], add_generation_prompt=True)
    prompt_ids, _ = _encode(tokenizer, prompt_text)
    if not prompt_ids:
        return None
    need = len(prompt_ids) + 1
    for conv in (chosen, rejected):
        _, labels = _response_tokens(tokenizer, prompt_text, conv)
        first = next((t for t, x in enumerate(labels) if x != IGNORE), None)
        if first is None:
            return None
        need = max(need, len(prompt_ids) + first + 1)
    return need


_LIMIT_REASON = {
    "sft": "no trained token left after truncation",
    "preference": "no room for a response token after the prompt",
    "rlvr": "prompt longer than the limit",
}
# Rows measured when every row was dropped (the error path re-tokenises; keep it bounded).
_NEEDED_SCAN = 20_000


def _nothing_survives(ds, tokenizer, kind: str, name: str, limit_name: str, limit: int) -> DataError:
    n = min(len(ds), _NEEDED_SCAN)
    needs = [
        needed_length(tokenizer, kind, row)
        for batch in ds.select(range(n)).iter(batch_size=256)
        for row in (dict(zip(batch, vals)) for vals in zip(*batch.values()))
    ]
    known = [x for x in needs if x is not None]
    of = "" if n == len(ds) else f" of the first {n}"
    if not known:
        need = f"no row{of} has a trained token at any length (check the chat template)"
    elif kind == "rlvr":
        need = f"the shortest prompt{of} has {min(known)} tokens"
    else:
        need = f"the shortest row{of} needs {limit_name} >= {min(known)}"
    return DataError(
        f"{name}: {limit_name} {limit} drops all {len(ds)} {kind} rows ({_LIMIT_REASON[kind]}); {need}"
    )


def _batch_fn(batch: dict, tokenizer, kind: str, max_seq_length: int, max_prompt_length: int) -> dict:
    """Batched `Dataset.map` body: rows that come back None are left out (that is how rows drop)."""
    n = len(next(iter(batch.values())))
    prompt_turns = batch.get("prompt_turns") or [0] * n  # absent in a plain Dataset of messages
    out: dict[str, list] = {}
    for j in range(n):
        if kind == "sft":
            ex = sft_example(tokenizer, batch["messages"][j], max_seq_length, prompt_turns[j] or 0)
        elif kind == "preference":
            ex = preference_example(tokenizer, batch["chosen"][j], batch["rejected"][j], max_seq_length)
        else:
            ex = rlvr_example(tokenizer, batch["messages"][j], max_prompt_length)
            if ex is not None:
                ex.update(
                    messages=batch["messages"][j],
                    ground_truth=batch["ground_truth"][j],
                    dataset=batch["dataset"][j],
                )
        if ex is None:
            continue
        for k, v in ex.items():
            out.setdefault(k, []).append(v)
    return out


_OUTPUT_COLUMNS = {
    "sft": ["input_ids", "labels"],
    "preference": [
        "chosen_input_ids",
        "chosen_labels",
        "rejected_input_ids",
        "rejected_labels",
        "prompt_length",
    ],
    "rlvr": ["prompt_input_ids", "prompt", "messages", "ground_truth", "dataset"],
}


def _output_features(kind: str):
    from datasets import Features, List, Value

    ids = List(Value("int32"))
    messages = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "sft": {"input_ids": ids, "labels": ids},
            "preference": {
                "chosen_input_ids": ids,
                "chosen_labels": ids,
                "rejected_input_ids": ids,
                "rejected_labels": ids,
                "prompt_length": Value("int32"),
            },
            "rlvr": {
                "prompt_input_ids": ids,
                "prompt": Value("string"),
                "messages": messages,
                "ground_truth": Value("string"),
                "dataset": Value("string"),
            },
        }[kind]
    )


# ----------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("OPEN_INSTRUCT_CACHE")
    return Path(base) / "tokenized" if base else Path.home() / ".cache" / "open_instruct" / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what determines token ids: vocab/merges/pre-tokenizer, special tokens, chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    h.update(json.dumps([type(tokenizer).__name__, special, tokenizer.chat_template or ""]).encode())
    return h.hexdigest()


def cache_key(data_hash: str, tokenizer, kind: str, settings: dict) -> str:
    payload = {
        "version": TRANSFORM_VERSION,
        "data": data_hash,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "transform": kind,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class TokenizedData:
    dataset: Any  # datasets.Dataset with the kind's output columns (see _OUTPUT_COLUMNS)
    kind: str
    num_input: int  # rows before the transform
    num_dropped: int  # rows dropped (no label left after truncation, prompt too long)
    data_hash: str  # content hash of the input rows
    cache_key: str
    cache_path: str | None  # where it is (or would be) cached; None with cache=False
    from_cache: bool


def tokenize_data(
    data,
    tokenizer,
    kind: str | None = None,
    *,
    max_seq_length: int = 2048,
    max_prompt_length: int = 2048,
    num_proc: int | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    name: str | None = None,
) -> TokenizedData:
    """Tokenises a `LoadedMix` (or a `datasets.Dataset` with canonical columns + `kind`), with caching.

    sft/preference use `max_seq_length`; rlvr uses `max_prompt_length`. Rows the limit drops are
    counted (`num_dropped`); when it drops every row, a DataError names the mix (`name`, default the
    LoadedMix's path), the limit and what the shortest row needs."""
    from datasets import Dataset, load_from_disk

    from .mixes import LoadedMix, content_hash

    if isinstance(data, LoadedMix):
        ds, kind, data_hash = data.dataset, kind or data.kind, data.content_hash
        name = name or data.path
    elif isinstance(data, Dataset):
        if kind is None:
            raise ConfigError("tokenize_data: pass kind= with a plain Dataset")
        ds, data_hash = data, content_hash(data)
    else:
        raise TypeError(f"tokenize_data: expected a LoadedMix or datasets.Dataset, got {type(data).__name__}")
    check_kind(kind)
    settings = (
        {"max_prompt_length": max_prompt_length} if kind == "rlvr" else {"max_seq_length": max_seq_length}
    )
    key = cache_key(data_hash, tokenizer, kind, settings)
    path = cache_root(cache_dir) / f"{kind}-{key}"
    name = name or "the data"
    limit_name, limit = next(iter(settings.items()))
    if len(ds) == 0:
        raise DataError(f"{name}: no {kind} rows to tokenise")

    if cache and (path / "stats.json").is_file():
        stats = json.loads((path / "stats.json").read_text())
        if stats["num_input"] <= stats["num_dropped"]:  # an entry written before empty results were refused
            raise _nothing_survives(ds, tokenizer, kind, name, limit_name, limit)
        return TokenizedData(
            load_from_disk(str(path / "data")),
            kind,
            stats["num_input"],
            stats["num_dropped"],
            data_hash,
            key,
            str(path),
            True,
        )

    tmp = None
    map_kwargs = {}
    if cache:
        # Built in a temp dir next to the final place and renamed, so a crash never leaves half an
        # entry behind. datasets' own map cache is bypassed: this cache is the one source of truth.
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        map_kwargs["cache_file_name"] = str(tmp / "map.arrow")
    out = ds.map(
        _batch_fn,
        batched=True,
        batch_size=256,
        remove_columns=ds.column_names,
        features=_output_features(kind),
        fn_kwargs=dict(
            tokenizer=tokenizer, kind=kind, max_seq_length=max_seq_length, max_prompt_length=max_prompt_length
        ),
        num_proc=num_proc,
        load_from_cache_file=False,
        new_fingerprint=key,  # our key already identifies the result; spares datasets hashing the tokenizer
        desc=f"tokenize {kind}",
        **map_kwargs,
    )
    num_dropped = len(ds) - len(out)
    if num_dropped == len(ds):
        del out
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _nothing_survives(ds, tokenizer, kind, name, limit_name, limit)
    if num_dropped:
        log.warning(
            "tokenize %s (%s): %s %d drops %d of %d rows (%s)",
            kind,
            name,
            limit_name,
            limit,
            num_dropped,
            len(ds),
            _LIMIT_REASON[kind],
        )
    if tmp is None:
        return TokenizedData(out, kind, len(ds), num_dropped, data_hash, key, None, False)

    out.save_to_disk(str(tmp / "data"))
    del out
    for f in tmp.glob("map*.arrow"):
        f.unlink()
    (tmp / "stats.json").write_text(
        json.dumps(
            {
                "num_input": len(ds),
                "num_dropped": num_dropped,
                "kind": kind,
                "data_hash": data_hash,
                "settings": settings,
            }
        )
    )
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished the same entry first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenizedData(
        load_from_disk(str(path / "data")), kind, len(ds), num_dropped, data_hash, key, str(path), False
    )
