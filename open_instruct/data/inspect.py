"""`open-instruct data inspect MIX --tokenizer DIR`: what a mix holds and what a stage would train on.

Prints rows per source (and rows dropped), token-length statistics after the stage's transform,
and one example rendered with its trained tokens in [brackets] (green when printing to a terminal).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable

from .rows import KINDS

IGNORE = -100


def length_stats(lengths: list[int]) -> dict:
    import numpy as np

    if not lengths:
        return {"min": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    a = np.asarray(lengths)
    return {
        "min": int(a.min()),
        "mean": float(a.mean()),
        "p50": int(np.percentile(a, 50)),
        "p95": int(np.percentile(a, 95)),
        "max": int(a.max()),
    }


def _fmt_stats(s: dict) -> str:
    return f"min {s['min']}  mean {s['mean']:.1f}  p50 {s['p50']}  p95 {s['p95']}  max {s['max']}"


def show_trained(tokenizer, input_ids: list[int], labels: list[int], color: bool = False) -> str:
    """The decoded sequence with trained spans marked: [brackets], or green with `color`."""
    out, start = [], 0
    for t in range(1, len(input_ids) + 1):
        if t == len(input_ids) or (labels[t] != IGNORE) != (labels[start] != IGNORE):
            text = tokenizer.decode(input_ids[start:t], skip_special_tokens=False)
            if labels[start] != IGNORE:
                text = f"\x1b[32m{text}\x1b[0m" if color else f"[{text}]"
            out.append(text)
            start = t
    return "".join(out)


def inspect_mix(
    mix_path: str,
    tokenizer,
    kind: str | None = None,
    max_seq_length: int = 2048,
    max_prompt_length: int = 2048,
    color: bool = False,
    example: int = 0,
    known_verifier: Callable[[str], bool] | None = None,
    label_check: Callable[[str, str], str | None] | None = None,
) -> str:
    """The report as text (also used by tests).

    `known_verifier(name)` (rlvr) tells whether a `dataset` value names a verifier; names it
    rejects are flagged in the report. `label_check` is passed to `load_mix`."""
    from .mixes import load_mix
    from .templates import template_name
    from .tokenize import tokenize_data

    mix = load_mix(mix_path, kind=kind, label_check=label_check)
    lines = [
        f"mix: {mix_path}  (kind {mix.kind}, {len(mix.dataset)} rows, content hash {mix.content_hash[:16]})",
        f"chat template: {template_name(tokenizer.chat_template)}",
        "sources:",
    ]
    for s in mix.sources:
        trimmed = f", {s.trimmed} trimmed to the prompt" if s.trimmed else ""
        lines.append(f"  {s.name}: {s.rows} rows read, {s.dropped} dropped{trimmed}, {s.selected} in the mix")
        if s.first_problem:
            lines.append(f"    first dropped: {s.first_problem}")
        if s.first_trimmed:
            lines.append(f"    first trimmed: {s.first_trimmed}")
    if mix.kind == "rlvr" and known_verifier is not None:
        # Counted over the whole mix, before the length limit drops any prompt.
        names = Counter(mix.dataset["dataset"])
        unknown = {k: v for k, v in names.items() if not known_verifier(k)}
        if unknown:
            lines.append(
                "WARNING: dataset values that name no verifier (these rows would fail the stage): "
                + ", ".join(f"{k!r} {v} rows" for k, v in sorted(unknown.items()))
            )
    td = tokenize_data(
        mix, tokenizer, mix.kind, max_seq_length=max_seq_length, max_prompt_length=max_prompt_length
    )
    ds = td.dataset
    limit = (
        f"max_prompt_length {max_prompt_length}" if mix.kind == "rlvr" else f"max_seq_length {max_seq_length}"
    )
    lines.append(f"tokenised: {len(ds)} rows, {td.num_dropped} dropped by the transform ({limit})")
    if len(ds) == 0:
        return "\n".join(lines)
    i = min(max(example, 0), len(ds) - 1)

    if mix.kind == "sft":
        lengths = [len(x) for x in ds["input_ids"]]
        trained = sum(sum(1 for t in lab if t != IGNORE) for lab in ds["labels"])
        lines.append(f"tokens per example: {_fmt_stats(length_stats(lengths))}")
        lines.append(
            f"tokens in total: {sum(lengths)}, trained: {trained} ({100 * trained / max(sum(lengths), 1):.1f}%)"
        )
        row = ds[i]
        lines += [
            f"example {i} (trained tokens {'in green' if color else 'in [brackets]'}):",
            show_trained(tokenizer, row["input_ids"], row["labels"], color),
        ]
    elif mix.kind == "preference":
        for side in ("chosen", "rejected"):
            lengths = [len(x) for x in ds[f"{side}_input_ids"]]
            lines.append(f"{side} tokens per example: {_fmt_stats(length_stats(lengths))}")
        lines.append(f"prompt tokens per example: {_fmt_stats(length_stats(list(ds['prompt_length'])))}")
        row = ds[i]
        lines.append(f"example {i} (trained tokens {'in green' if color else 'in [brackets]'}):")
        for side in ("chosen", "rejected"):
            lines += [
                f"--- {side}:",
                show_trained(tokenizer, row[f"{side}_input_ids"], row[f"{side}_labels"], color),
            ]
    else:
        lengths = [len(x) for x in ds["prompt_input_ids"]]
        lines.append(f"prompt tokens per example: {_fmt_stats(length_stats(lengths))}")
        counts = Counter(ds["dataset"])
        lines.append(
            "verifiers (dataset column): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
        row = ds[i]
        lines += [
            f"example {i} (prompt as the rollout engine sees it; ground_truth {row['ground_truth']!r}, "
            f"dataset {row['dataset']!r}):",
            row["prompt"],
        ]
    return "\n".join(lines)


def inspect_command(args) -> int:
    from transformers import AutoTokenizer

    from ..errors import ConfigError
    from .templates import choose_template

    check_source = getattr(args, "check_source", None)
    if check_source is not None:  # a missing dir, no tokenizer files, a hub id without network: one line
        check_source(args.tokenizer, "data inspect --tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    except Exception as e:  # noqa: BLE001 - a bad path/dir is the user's input
        raise ConfigError(
            f"--tokenizer {args.tokenizer}: cannot load a tokenizer ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})"
        ) from None
    choose_template(tokenizer, args.chat_template, add_bos=args.add_bos, source=args.tokenizer)
    color = sys.stdout.isatty() and not args.no_color
    print(
        inspect_mix(
            args.mix,
            tokenizer,
            kind=args.kind,
            max_seq_length=args.max_seq_length,
            max_prompt_length=args.max_prompt_length,
            color=color,
            example=args.example,
            known_verifier=getattr(args, "known_verifier", None),
            label_check=getattr(args, "label_check", None),
        )
    )
    return 0


def add_data_parser(
    subparsers,
    known_verifier: Callable[[str], bool] | None = None,
    label_check: Callable[[str, str], str | None] | None = None,
    check_source: Callable[[str, str], None] | None = None,
) -> argparse.ArgumentParser:
    """`data` with its subcommand `inspect`. The caller that knows the verifiers (the CLI) passes
    `known_verifier` / `label_check` here; this package does not import reward_fns. `check_source(path,
    flag)` raises a one-line error when --tokenizer cannot be loaded (model/source.py, a layer above)."""
    p = subparsers.add_parser("data", help="inspect data mixes")
    sub = p.add_subparsers(dest="data_command", required=True)
    q = sub.add_parser("inspect", help="rows per source, token lengths, and what is trained on")
    q.add_argument("mix", help="mix YAML or a single .jsonl/.json/.parquet file")
    q.add_argument("--tokenizer", required=True, help="tokenizer directory or hub id")
    q.add_argument("--kind", choices=KINDS, default=None, help="default: the mix's `kind`, else inferred")
    q.add_argument("--max-seq-length", type=int, default=2048)
    q.add_argument("--max-prompt-length", type=int, default=2048)
    q.add_argument(
        "--chat-template",
        choices=["auto", "tulu", "olmo"],
        default="auto",
        help="as a stage's chat_template: auto (default) keeps the tokenizer's own, else tulu",
    )
    q.add_argument("--add-bos", action="store_true", help="with tulu/olmo: BOS in front (OLMo 2)")
    q.add_argument("--example", type=int, default=0, help="which row to render")
    q.add_argument("--no-color", action="store_true")
    q.set_defaults(
        func=inspect_command,
        known_verifier=known_verifier,
        label_check=label_check,
        check_source=check_source,
    )
    return p
