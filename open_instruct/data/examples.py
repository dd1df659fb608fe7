"""Examples of a tokenised dataset as plain dicts."""

from __future__ import annotations


def take(dataset, indices) -> list[dict]:
    """Examples at `indices` as dicts (one Arrow read, not one per row)."""
    cols = dataset[[int(i) for i in indices]]
    keys = list(cols)
    return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]
