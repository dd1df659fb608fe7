"""Collation into the batch contract of docs/architecture.md, padded or packed.

Padded: one example per row, right-padded, with `attention_mask`.
Packed: examples back to back in as few rows as fit `max_tokens_per_row`, no `attention_mask`;
`position_ids` restart at 0 for every example, from which transformers (5.x, sdpa/eager/flash)
builds a block-diagonal causal mask, so a packed row computes exactly what separate rows would.
Measured with transformers 5.19 (sdpa and eager, CPU): this happens only when the forward call
has no KV cache, i.e. `model(..., use_cache=False)`; with the default `use_cache=True` a
DynamicCache is created and the packed mask is silently skipped (sequences attend to each other).
Padding at a packed row's end gets position 0, label -100, seq_index -1.

Both modes give `seq_index` (example index per token, -1 on padding) and `num_sequences`, so
per-sequence sums are the same `scatter_add` either way.
"""

from __future__ import annotations

import torch

IGNORE = -100


def _lists(ex: dict, input_key: str, labels_key: str) -> tuple[list[int], list[int]]:
    ids = list(ex[input_key])
    labels = list(ex[labels_key]) if labels_key in ex else list(ids)
    if len(ids) != len(labels):
        raise ValueError(f"example has {len(ids)} {input_key} but {len(labels)} {labels_key}")
    if not ids:
        raise ValueError("empty example")
    labels[0] = IGNORE  # nothing predicts a sequence's first token
    return ids, labels


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _to_batch(
    rows: list[list[tuple[int, list[int], list[int]]]],
    pad_token_id: int,
    packed: bool,
    pad_to_multiple_of: int | None,
    num_sequences: int,
) -> dict:
    width = _round_up(max(sum(len(ids) for _, ids, _ in row) for row in rows), pad_to_multiple_of)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    seq_index = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for index, ids, labs in row:
            n = len(ids)
            input_ids[r, t : t + n] = torch.tensor(ids, dtype=torch.long)
            labels[r, t : t + n] = torch.tensor(labs, dtype=torch.long)
            position_ids[r, t : t + n] = torch.arange(n)
            seq_index[r, t : t + n] = index
            t += n
    batch = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "seq_index": seq_index,
        "num_sequences": num_sequences,
    }
    if not packed:
        batch["attention_mask"] = (seq_index >= 0).long()
    return batch


def pad_collate(
    examples: list[dict],
    pad_token_id: int,
    *,
    pad_to_multiple_of: int | None = None,
    input_key: str = "input_ids",
    labels_key: str = "labels",
) -> dict:
    """One example per row, right-padded. Examples are dicts with `input_ids` and `labels`
    (labels default to input_ids when absent, e.g. for scoring a prompt)."""
    rows = [[(i, *_lists(ex, input_key, labels_key))] for i, ex in enumerate(examples)]
    return _to_batch(rows, pad_token_id, False, pad_to_multiple_of, len(examples))


def pack_rows(lengths: list[int], max_tokens_per_row: int | None) -> list[list[int]]:
    """Assigns examples (by length) to rows, first fit in order; each row's total <= the limit.
    `None` puts everything in one row."""
    if max_tokens_per_row is None:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > max_tokens_per_row:
            raise ValueError(
                f"example {i} has {n} tokens, more than max_tokens_per_row={max_tokens_per_row}; "
                f"truncate it (max_seq_length) or raise the limit"
            )
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_tokens_per_row - n)
    return rows


def pack_collate(
    examples: list[dict],
    max_tokens_per_row: int | None = None,
    pad_token_id: int = 0,
    *,
    pad_to_multiple_of: int | None = None,
    input_key: str = "input_ids",
    labels_key: str = "labels",
) -> dict:
    """Examples packed back to back into rows of at most `max_tokens_per_row` tokens (None: one row)."""
    seqs = [_lists(ex, input_key, labels_key) for ex in examples]
    plan = pack_rows([len(ids) for ids, _ in seqs], max_tokens_per_row)
    rows = [[(i, *seqs[i]) for i in row] for row in plan]
    return _to_batch(rows, pad_token_id, True, pad_to_multiple_of, len(examples))


def preference_examples(rows: list[dict]) -> list[dict]:
    """[chosen_0..chosen_{N-1}, rejected_0..rejected_{N-1}] as {input_ids, labels} examples, so that
    in the collated batch seq_index i and i+N are a pair."""
    chosen = [{"input_ids": r["chosen_input_ids"], "labels": r["chosen_labels"]} for r in rows]
    rejected = [{"input_ids": r["rejected_input_ids"], "labels": r["rejected_labels"]} for r in rows]
    return chosen + rejected


def preference_collate(
    rows: list[dict],
    pad_token_id: int,
    *,
    packing: bool = False,
    max_tokens_per_row: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict:
    """One batch holding chosen then rejected (num_sequences = 2N); see `preference_examples`."""
    examples = preference_examples(rows)
    if packing:
        return pack_collate(examples, max_tokens_per_row, pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
    return pad_collate(examples, pad_token_id, pad_to_multiple_of=pad_to_multiple_of)


def token_budget_batches(
    lengths: list[int], max_tokens: int, *, seed: int | None = None, max_examples: int | None = None
) -> list[list[int]]:
    """Splits example indices into consecutive batches of at most `max_tokens` tokens in total
    (and `max_examples` examples), after a seeded shuffle when `seed` is given. Use with
    `pack_collate(..., max_tokens_per_row=max_tokens)` for one full row per batch."""
    order = list(range(len(lengths)))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(lengths), generator=g).tolist()
    batches: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        if n > max_tokens:
            raise ValueError(f"example {i} has {n} tokens, more than the budget max_tokens={max_tokens}")
        if cur and (used + n > max_tokens or (max_examples and len(cur) >= max_examples)):
            batches.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        batches.append(cur)
    return batches
