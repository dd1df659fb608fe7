"""Preflight: before RL step 1, check that vLLM and the learner are the same policy.

A vLLM engine that disagrees with the learner (another dtype, another tokenizer or chat
template, weights never synced) makes every PPO/GRPO importance ratio wrong; training then
"runs" and learns nothing or diverges, and the cause is hard to see in the curves. So before
step 1 we generate one batch with vLLM, score the sampled sequences with vLLM and with the
learner, and compare the two log-probs of every response token:

- `kl`: mean per-token KL(engine || learner), estimated on engine samples with the
  non-negative k3 estimator E[exp(d) - d - 1], d = logp_learner - logp_engine;
- `max_abs_diff` / `mean_abs_diff` of the log-probs.

Above `max_kl` the run refuses to start with a one-line `PreflightError` (a `UserError`:
`error: ...`, exit 2) naming the likely cause. Measured on this CPU (fp32 tiny Llama): matched
weights give KL ~1e-13 and max diff ~5e-7; different random weights give KL ~0.1-1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

# sequences (prompt + response token ids) -> log-prob of tokens 1..T-1 of each, like
# RolloutGroup.score.
LogprobFn = Callable[[list[list[int]]], list[list[float]]]

_DTYPE_ALIASES = {
    "float": "float32",
    "fp32": "float32",
    "torch.float32": "float32",
    "half": "float16",
    "fp16": "float16",
    "torch.float16": "float16",
    "bf16": "bfloat16",
    "torch.bfloat16": "bfloat16",
}


class PreflightError(UserError):
    """vLLM and the learner are not the same policy before training starts."""


@dataclass
class PreflightReport:
    kl: float
    max_abs_diff: float
    mean_abs_diff: float
    num_tokens: int
    seconds: float

    def line(self) -> str:
        return (
            f"mean per-token KL {self.kl:.3g}, max |logprob diff| {self.max_abs_diff:.3g}, "
            f"mean {self.mean_abs_diff:.3g} over {self.num_tokens} response tokens"
        )


def _norm_dtype(d: Any) -> str | None:
    if d is None:
        return None
    s = str(d).lower()
    return _DTYPE_ALIASES.get(s, s)


def compare_logprobs(
    engine: Sequence[Sequence[float]], learner: Sequence[Sequence[float]], starts: Sequence[int]
) -> tuple[float, float, float, int]:
    """(kl, max |d|, mean |d|, tokens) over positions >= starts[i] of each row."""
    total_kl = total_abs = 0.0
    max_abs = 0.0
    count = 0
    for i, (e_row, l_row) in enumerate(zip(engine, learner)):
        if len(e_row) != len(l_row):
            raise ValueError(f"sequence {i}: engine gave {len(e_row)} log-probs, learner {len(l_row)}")
        for e, lr in zip(e_row[starts[i] :], l_row[starts[i] :]):
            d = lr - e
            total_kl += math.expm1(d) - d
            total_abs += abs(d)
            max_abs = max(max_abs, abs(d))
            count += 1
    if count == 0:
        return 0.0, 0.0, 0.0, 0
    return total_kl / count, max_abs, total_abs / count, count


def likely_cause(report: PreflightReport, engine_dtype: Any = None, learner_dtype: Any = None) -> str:
    e, lr = _norm_dtype(engine_dtype), _norm_dtype(learner_dtype)
    if e and lr and e != "auto" and e != lr and report.kl < 0.1:
        return (
            f"dtype mismatch (engine {e} vs learner {lr}); run both in the same dtype or raise "
            f"rl.preflight_max_kl"
        )
    return (
        "stale or different weights (the engine loaded another checkpoint, or the learner's "
        "weights were not synced before step 1) or a tokenizer/chat-template mismatch between "
        "the engine's model dir and the learner"
    )


@dataclass
class EngineSample:
    """One batch the engines generated and scored: prompt + response token ids, the score-row index of
    each row's first response token, and the engines' log-probs."""

    sequences: list[list[int]]
    starts: list[int]
    logprobs: list[list[float]]
    t0: float


def engine_sample(
    engine_group: Any, prompts: Sequence[Sequence[int]], sampling: dict | None = None
) -> EngineSample:
    """Generates one batch from `prompts` (token ids) with the engines and scores it with them."""
    t0 = time.perf_counter()
    sampling = dict(sampling or {"temperature": 1.0, "max_tokens": 32, "n": 1, "seed": 0})
    gen = engine_group.generate(prompts, sampling)
    sequences, starts = [], []
    for prompt, samples in zip(prompts, gen.completions):
        for c in samples:
            sequences.append(list(prompt) + list(c.token_ids))
            starts.append(len(prompt) - 1)  # score row index of the first response token
    return EngineSample(sequences, starts, engine_group.score(sequences), t0)


def judge(
    sample: EngineSample,
    learner_lp: Sequence[Sequence[float]],
    *,
    max_kl: float = 1e-2,
    engine_dtype: Any = None,
    learner_dtype: Any = None,
) -> PreflightReport:
    """The report of the engines' vs the learner's log-probs of `sample`; PreflightError above `max_kl`."""
    kl, max_abs, mean_abs, count = compare_logprobs(sample.logprobs, learner_lp, sample.starts)
    report = PreflightReport(kl, max_abs, mean_abs, count, time.perf_counter() - sample.t0)
    if not kl <= max_kl:  # also catches NaN
        raise PreflightError(
            f"preflight: vLLM and the learner disagree before step 1: {report.line()} "
            f"(max_kl {max_kl:g}); likely cause: "
            f"{likely_cause(report, engine_dtype, learner_dtype)}"
        )
    return report


def preflight_kl(
    engine_group: Any,
    learner_logprob_fn: LogprobFn,
    prompts: Sequence[Sequence[int]],
    *,
    sampling: dict | None = None,
    max_kl: float = 1e-2,
    engine_dtype: Any = None,
    learner_dtype: Any = None,
) -> PreflightReport:
    """Generates one batch from `prompts` (token ids) with the engines, scores prompt+response
    with both sides and raises PreflightError when their mean per-token KL exceeds `max_kl`.
    Returns the report (log it) otherwise. `engine_dtype` defaults to the group's config."""
    sample = engine_sample(engine_group, prompts, sampling)
    if engine_dtype is None:
        engine_dtype = getattr(getattr(engine_group, "cfg", None), "dtype", None)
    return judge(
        sample,
        learner_logprob_fn(sample.sequences),
        max_kl=max_kl,
        engine_dtype=engine_dtype,
        learner_dtype=learner_dtype,
    )


def hf_logprob_fn(model: Any, batch_size: int = 16, pad_id: int = 0) -> LogprobFn:
    """A LogprobFn for a Hugging Face causal LM (right-padded batches, no grad)."""
    import torch

    def fn(sequences: list[list[int]]) -> list[list[float]]:
        out: list[list[float]] = []
        device = next(model.parameters()).device
        for b in range(0, len(sequences), batch_size):
            chunk = sequences[b : b + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0].cpu()
            out.extend(lp[i, : len(s) - 1].tolist() for i, s in enumerate(chunk))
        return out

    return fn
