"""What a scored batch reports: per-sample scores and statuses, and per-verifier counters (mean,
accuracy, failures by kind, label errors) with the metrics they log as."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import registry
from .outcome import ERROR, JUNK, LABEL_ERROR, NO_SCORE, OK, TIMEOUT, Outcome


@dataclass
class VerifierStats:
    """Per-verifier counts for one batch. ``mean`` is over all samples (failures count as 0);
    ``accuracy`` is the fraction scoring at least 1.0 (full marks for the built-ins)."""

    count: int = 0
    score_sum: float = 0.0
    full_marks: int = 0
    errors: int = 0
    timeouts: int = 0
    junk: int = 0
    no_score: int = 0
    label_errors: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    first_label_error: str | None = None

    @property
    def mean(self) -> float:
        return self.score_sum / self.count if self.count else 0.0

    @property
    def accuracy(self) -> float:
        return self.full_marks / self.count if self.count else 0.0

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts + self.junk + self.label_errors

    def add(self, outcome: Outcome) -> None:
        self.count += 1
        self.score_sum += outcome.score
        self.full_marks += outcome.score >= 1.0
        self.seconds += outcome.seconds
        if outcome.status == ERROR:
            self.errors += 1
        elif outcome.status == TIMEOUT:
            self.timeouts += 1
        elif outcome.status == JUNK:
            self.junk += 1
        elif outcome.status == NO_SCORE:
            self.no_score += 1
        elif outcome.status == LABEL_ERROR:
            self.label_errors += 1
            if self.first_label_error is None:
                self.first_label_error = outcome.message
        if outcome.status in (ERROR, TIMEOUT, JUNK, LABEL_ERROR) and self.first_error is None:
            self.first_error = f"{outcome.status}: {outcome.message}"


@dataclass
class ScoreBatch:
    """Scores for one batch, in input order, plus what happened."""

    scores: list[float]
    metadata: list[dict[str, Any]]
    statuses: list[str]  # ok | error | timeout | junk | no_score | label_error, per sample
    messages: list[str | None]
    seconds: list[float]  # time spent scoring each sample
    stats: dict[str, VerifierStats] = field(default_factory=dict)

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Flat metrics for metrics.jsonl: ``{prefix}/{verifier}/{mean,accuracy,count,errors,timeouts,
        junk,no_score,label_errors,latency_ms}`` plus the same over all verifiers as ``{prefix}/all/...``."""
        out: dict[str, float] = {}
        total = VerifierStats()
        for name, st in sorted(self.stats.items()):
            out.update(_stat_metrics(f"{prefix}/{name}", st))
            for f in (
                "count",
                "score_sum",
                "full_marks",
                "errors",
                "timeouts",
                "junk",
                "no_score",
                "label_errors",
                "seconds",
            ):
                setattr(total, f, getattr(total, f) + getattr(st, f))
        if self.stats:
            out.update(_stat_metrics(f"{prefix}/all", total))
        return out


def _stat_metrics(key: str, st: VerifierStats) -> dict[str, float]:
    return {
        f"{key}/mean": st.mean,
        f"{key}/accuracy": st.accuracy,
        f"{key}/count": st.count,
        f"{key}/errors": st.errors,
        f"{key}/timeouts": st.timeouts,
        f"{key}/junk": st.junk,
        f"{key}/no_score": st.no_score,
        f"{key}/label_errors": st.label_errors,
        f"{key}/latency_ms": 1000.0 * st.seconds / st.count if st.count else 0.0,
    }


def assemble(outcomes: list[Outcome | None], specs: list[registry.RewardSpec]) -> ScoreBatch:
    stats: dict[str, VerifierStats] = {}
    filled = [o if o is not None else Outcome(ERROR, message="not scored (internal error)") for o in outcomes]
    for o, spec in zip(filled, specs):
        stats.setdefault(spec.name, VerifierStats()).add(o)
    return ScoreBatch(
        scores=[o.score if o.status == OK else 0.0 for o in filled],
        metadata=[o.metadata for o in filled],
        statuses=[o.status for o in filled],
        messages=[o.message for o in filled],
        seconds=[o.seconds for o in filled],
        stats=stats,
    )
