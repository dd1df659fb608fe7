"""Sample and score: the one path from tokenised prompts to verifiable scores, shared by RLVR's rollouts,
held-out evaluation and on-policy preference pairs.

    batch = sample_and_score(group, tokenizer, rows, runner, {"n": 8, "temperature": 1.0, "max_tokens": 32})
    batch.texts[k], batch.scores[k], batch.completions[k]      # sample k, prompt k // n
    batch.per_prompt()                                        # the same, grouped by prompt

`rows` are tokenised RLVR rows (`prompt_input_ids`, `prompt`, `ground_truth`, `dataset`, ...). The
reward runner picks each sample's verifier by its row's `dataset` (reward_fns).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .engine import Completion, Generation


@dataclass
class ScoredBatch:
    rows: list[dict]  # the prompts' rows, in order
    n: int  # samples per prompt
    completions: list[Completion]  # flat: sample k belongs to rows[k // n]
    texts: list[str]  # decoded completions (special tokens skipped)
    scores: list[float]
    generation: Generation
    reward_metrics: dict[str, float]  # the runner's counters (failures, timeouts, per-verifier means)
    reward_seconds: float

    def row_of(self, k: int) -> dict:
        return self.rows[k // self.n]

    def per_prompt(self) -> list[tuple[dict, list[Completion], list[str], list[float]]]:
        """(row, its completions, their texts, their scores) for each prompt."""
        n = self.n
        return [
            (
                row,
                self.completions[i * n : (i + 1) * n],
                self.texts[i * n : (i + 1) * n],
                self.scores[i * n : (i + 1) * n],
            )
            for i, row in enumerate(self.rows)
        ]


def sample_and_score(group, tokenizer, rows: list[dict], runner, sampling: Mapping[str, Any]) -> ScoredBatch:
    """Generates `sampling["n"]` completions per row with the engines, decodes them and scores each with
    the verifier its row names. Every prompt gets exactly n samples."""
    gen = group.generate([r["prompt_input_ids"] for r in rows], dict(sampling))
    n = int(sampling.get("n", 1))
    completions = [c for per_prompt in gen.completions for c in per_prompt]
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
    owners = [rows[k // n] for k in range(len(completions))]
    t0 = time.perf_counter()
    scored = runner.score(
        texts,
        [r["ground_truth"] for r in owners],
        [r["dataset"] for r in owners],
        prompts=[r["prompt"] for r in owners],
        token_ids=[list(c.token_ids) for c in completions],
    )
    return ScoredBatch(
        rows=list(rows),
        n=n,
        completions=completions,
        texts=texts,
        scores=[float(s) for s in scored.scores],
        generation=gen,
        reward_metrics=scored.metrics("reward"),
        reward_seconds=time.perf_counter() - t0,
    )
