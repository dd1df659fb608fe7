"""What the benchmark scripts share: the result table they print when run by hand."""

from __future__ import annotations


def print_table(rows: list[dict]) -> None:
    """Rows of run(): stage, metric, value, unit, baseline (TRL; None when it has no counterpart), ratio, target."""
    print("| stage | metric | this toolkit | TRL | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = "-" if r.get("baseline") is None else f"{r['baseline']:.1f} {r['unit']}"
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        print(
            f"| {r['stage']} | {r['metric']} | {r['value']:.1f} {r['unit']} | {base} | {ratio} "
            f"| {r.get('target') or '-'} |"
        )
