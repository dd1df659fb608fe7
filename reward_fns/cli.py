"""``open-instruct rewards list | score | check``: the reward commands.

The lead CLI calls :func:`add_rewards_parser` on its subparsers; each subcommand sets
``func=handler`` where the handler takes the argparse Namespace and returns an exit status. Bad input
raises a ``ValueError`` subclass with a one-line message (file and line named) that the CLI prints as
``error: ...``. ``python -m reward_fns.cli rewards ...`` runs the same commands without the lead CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from typing import Any

from . import registry
from .errors import RewardError, RewardInputError, UnknownRewardError
from .runner import RewardRunner
from .user_rewards import load_extra

CASES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases")


def add_rewards_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "rewards",
        help="list, run and check reward functions",
        description="List the registered rewards, score a JSONL file, or check a reward "
        "against golden cases and adversarial probes.",
    )
    sub = p.add_subparsers(dest="rewards_command", required=True, metavar="{list,score,check}")

    lp = sub.add_parser("list", help="registered rewards and what they check")
    _module_arg(lp)
    lp.set_defaults(func=list_command)

    sp = sub.add_parser(
        "score", help="score completions from a JSONL file; prints the lines with a score added"
    )
    sp.add_argument(
        "--input", required=True, help="JSONL: completion, ground_truth, dataset[, prompt] per line"
    )
    _module_arg(sp)
    sp.add_argument(
        "--timeout", type=float, default=10.0, help="per-sample time limit in seconds (default 10)"
    )
    sp.add_argument(
        "--workers", type=int, default=None, help="worker processes, at least 1 (default: up to 2)"
    )
    sp.set_defaults(func=score_command)

    cp = sub.add_parser("check", help="run a reward on golden cases plus adversarial probes and report")
    cp.add_argument("name", help="reward name")
    cp.add_argument(
        "--cases",
        help="JSONL: completion, ground_truth, expected[, prompt] per line "
        "(default: the shipped cases for a built-in)",
    )
    _module_arg(cp)
    cp.add_argument(
        "--timeout", type=float, default=10.0, help="per-sample time limit in seconds (default 10)"
    )
    cp.set_defaults(func=check_command)
    return p


def _module_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reward-module",
        action="append",
        default=[],
        metavar="SPEC",
        help="user reward: path/to/file.py:function, package.module:function, or name=SPEC (repeatable)",
    )


# ------------------------------------------------------------------------------------------ list
def list_command(args: argparse.Namespace) -> int:
    for spec in args.reward_module:
        load_extra(spec)
    rows = registry.list_rewards()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        labels = registry.get_spec(name).label_types or "any (not declared)"
        print(f"{name:<{width}}  {description or '(no description)'}  [label: {labels}]")
    return 0


# ------------------------------------------------------------------------------------------ score
def read_jsonl(path: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """All lines as objects; a malformed line raises one line naming the file and line number."""
    if not os.path.isfile(path):
        raise RewardInputError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise RewardInputError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise RewardInputError(
                    f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}"
                )
            missing = [k for k in required if k not in row]
            if missing:
                raise RewardInputError(f"{path} line {lineno}: missing field {', '.join(missing)}")
            if not isinstance(row.get("completion"), str):
                raise RewardInputError(f"{path} line {lineno}: completion must be a string")
            if "prompt" in row and row["prompt"] is not None and not isinstance(row["prompt"], str):
                raise RewardInputError(f"{path} line {lineno}: prompt must be a string")
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise RewardInputError(f"{path}: no lines to score")
    return rows


def _check_timeout(value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise RewardInputError(f"--timeout must be a positive number of seconds, got {value:g}")


def check_labels(path: str, rows: list[dict[str, Any]], names: list[str]) -> None:
    """Raise one line naming the file, line and verifier of the first label its verifier cannot use
    (and how many more there are), before anything is scored."""
    bad = []
    for row, name in zip(rows, names):
        problem = registry.get_spec(name).label_problem(row["ground_truth"])
        if problem is not None:
            bad.append((row["_line"], registry.canonical_name(name), problem))
    if bad:
        line, name, problem = bad[0]
        more = (
            f" (and {len(bad) - 1} more line{'s' if len(bad) > 2 else ''} with unusable labels)"
            if len(bad) > 1
            else ""
        )
        raise RewardInputError(f"{path} line {line}: ground_truth for verifier {name!r}: {problem}{more}")


def score_command(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise RewardInputError(f"--workers must be at least 1, got {args.workers}")
    _check_timeout(args.timeout)
    for spec in args.reward_module:
        load_extra(spec)
    rows = read_jsonl(args.input, ("completion", "ground_truth", "dataset"))
    known = set(registry.registered_names())
    for row in rows:
        if not isinstance(row["dataset"], str) or registry.canonical_name(row["dataset"]) not in known:
            raise UnknownRewardError(
                f"{args.input} line {row['_line']}: no reward registered for dataset "
                f"{row['dataset']!r}; known rewards: {', '.join(sorted(known))}"
            )
    check_labels(args.input, rows, [row["dataset"] for row in rows])
    with RewardRunner(timeout_s=args.timeout, num_workers=args.workers) as runner:
        chunk = 512
        totals: dict[str, list[float]] = {}
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            batch = runner.score(
                [r["completion"] for r in part],
                [r["ground_truth"] for r in part],
                [r["dataset"] for r in part],
                prompts=[r.get("prompt") for r in part],
            )
            for row, score, status, message in zip(part, batch.scores, batch.statuses, batch.messages):
                row.pop("_line")
                row["score"] = score
                if status != "ok":
                    row["score_status"] = status
                    row["score_error"] = message
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            for name, st in batch.stats.items():
                acc = totals.setdefault(name, [0, 0.0, 0])
                acc[0] += st.count
                acc[1] += st.score_sum
                acc[2] += st.failures
    sys.stdout.flush()
    for name, (count, total, failures) in sorted(totals.items()):
        print(f"{name}: {count} scored, mean {total / count:.3f}, {failures} failed", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ check
def _probes(label: Any) -> list[tuple[str, str]]:
    words = ("alpha beta 12 gamma 3.5 delta \\boxed{7} epsilon, zeta. ") * 20
    big = (words * (1_000_000 // len(words) + 1))[:1_000_000]
    return [
        ("empty completion", ""),
        ("very long completion (~1 MB)", big),
        ("unicode", "Ответ: ４２ — 答案是 42 🙂 \u202eرقم\u202c e\u0301 \x00 \ud7ff"),
        ("unclosed <think>", "<think>Let me think. The answer is 42 and \\boxed{42}"),
        ("numbers with commas", "The total is 1,234,567.89, so the answer is 1,000."),
    ]


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0


def check_command(args: argparse.Namespace) -> int:
    _check_timeout(args.timeout)
    for spec in args.reward_module:
        load_extra(spec)
    spec = registry.get_spec(args.name)
    path = args.cases or os.path.join(CASES_DIR, f"{spec.name}.jsonl")
    if args.cases is None and not os.path.isfile(path):
        raise RewardInputError(f"reward {spec.name!r} has no shipped cases; pass --cases FILE.jsonl")
    cases = read_jsonl(path, ("completion", "ground_truth", "expected"))
    for c in cases:
        if isinstance(c["expected"], bool) or not isinstance(c["expected"], (int, float)):
            raise RewardInputError(f"{path} line {c['_line']}: expected must be a number")
    check_labels(path, cases, [spec.name] * len(cases))
    probes = _probes(cases[0]["ground_truth"])
    completions = [c["completion"] for c in cases] + [p[1] for p in probes]
    labels = [c["ground_truth"] for c in cases] + [cases[0]["ground_truth"]] * len(probes)
    prompts = [c.get("prompt") for c in cases] + [cases[0].get("prompt")] * len(probes)
    with RewardRunner(timeout_s=args.timeout) as runner:
        batch = runner.score(completions, labels, [spec.name] * len(completions), prompts=prompts)
    n = len(cases)
    print(f"reward {spec.name}: {n} golden cases from {path}, {len(probes)} adversarial probes")
    failed = 0
    for i, c in enumerate(cases):
        got, status = batch.scores[i], batch.statuses[i]
        ok = status == "ok" and abs(got - float(c["expected"])) <= 1e-6
        failed += not ok
        note = c.get("note") or _clip(c["completion"])
        extra = f" [{status}: {batch.messages[i]}]" if status != "ok" else ""
        print(
            f"  {'PASS' if ok else 'FAIL'}  line {c['_line']:>3}  expected {float(c['expected']):g}  "
            f"got {got:g}{extra}  {note}"
        )
    print("adversarial probes (label of the first case):")
    for j, (what, _) in enumerate(probes):
        i = n + j
        extra = f" [{batch.statuses[i]}: {batch.messages[i]}]" if batch.statuses[i] != "ok" else ""
        print(f"  {what:<30} score {batch.scores[i]:g}  {1000 * batch.seconds[i]:.1f} ms{extra}")
    golden_scores = batch.scores[:n]
    lat = batch.seconds
    errors = sum(s == "error" for s in batch.statuses)
    timeouts = sum(s == "timeout" for s in batch.statuses)
    junk = sum(s == "junk" for s in batch.statuses)
    variance = statistics.pvariance(golden_scores) if n > 1 else 0.0
    print(
        f"summary: {n - failed}/{n} golden cases pass; errors {errors}, timeouts {timeouts}, junk {junk} "
        f"(over cases and probes)"
    )
    print(
        f"latency: mean {1000 * statistics.fmean(lat):.2f} ms, p95 {1000 * _p95(lat):.2f} ms per completion"
    )
    print(f"score over golden cases: mean {statistics.fmean(golden_scores):.3f}, variance {variance:.4f}")
    if n < 2 or max(golden_scores) == min(golden_scores):
        print(
            f"WARNING: the reward is constant ({golden_scores[0]:g}) over the golden cases: "
            "constant reward gives no learning signal"
        )
    return 1 if failed else 0


def _clip(text: str, limit: int = 50) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reward_fns.cli")
    add_rewards_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RewardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
