"""Held-out evaluation: generate with vLLM for a mix's prompts, score with reward_fns.

    open-instruct eval --model DIR --data MIX.yaml [--samples K]

Reports per-verifier accuracy (pass@1 = mean score over samples; pass@k with the unbiased
estimator of Chen et al. 2021 when K > 1, a sample counting as correct when its score >= 0.5)
and the non-EOS rate (responses cut by the length limit).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

CORRECT = 0.5  # a sample scoring >= this counts as right (pass@k, preference pairs)


EVAL_COMMAND = "eval"  # EvalSpec's `where` for the `eval` command
CLI_FLAGS = {
    "dataset_mix": "--data",
    "samples": "--samples",
    "max_tokens": "--max-tokens",
    "max_prompt_length": "--max-prompt-length",
    "limit": "--limit",
    "temperature": "--temperature",
}


@dataclass
class EvalSpec:
    """Held-out evaluation settings: the recipe's `eval:` block (after every stage and of the base
    model) and the `eval` command's flags. Prompts come from an RLVR-format mix."""

    dataset_mix: Any = ""  # a mix YAML / data file path, or (in a recipe) an inline mix mapping
    max_tokens: int = 256
    limit: int | None = None  # first N prompts
    samples: int = 1
    temperature: float | None = None  # default: 0 (greedy) for 1 sample, 1.0 otherwise
    seed: int = 0
    max_prompt_length: int = 2048
    reward_modules: list[str] = field(default_factory=list)
    rollout: dict = field(default_factory=dict)  # RolloutConfig fields (device, multiprocess_engine, ...)
    base: bool = True  # recipes: also evaluate the base model, the row every stage improves on

    def validate(self, where: str) -> None:
        # the `eval` command's settings are its flags: errors name the flag (`eval --limit`), not a key
        cli = where == EVAL_COMMAND

        def key(name: str) -> str:
            return f"{where} {CLI_FLAGS[name]}" if cli else f"{where}.{name}"

        if not self.dataset_mix:
            raise ConfigError(
                f"{key('dataset_mix')}: required" if cli else f"{where}: missing required key 'dataset_mix'"
            )
        for name in ("samples", "max_tokens", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key(name)}: must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            unset = "leave it out for all prompts" if cli else "or null for all prompts"
            raise ConfigError(f"{key('limit')}: must be >= 1 ({unset}), got {self.limit}")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"{key('temperature')}: must be >= 0, got {self.temperature}")
        if self.samples > 1 and self.temperature == 0:
            raise ConfigError(f"{key('temperature')}: 0 (greedy) gives {self.samples} identical samples")
        from ..config import from_dict
        from .config import RolloutConfig

        from_dict(RolloutConfig, {"model": "x", **self.rollout}, f"{where}.rollout")

    @property
    def resolved_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.samples == 1 else 1.0

    def sampling(self) -> dict:
        return {
            "n": self.samples,
            "temperature": self.resolved_temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k draws without replacement from n samples, c of them correct, is correct)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@dataclass
class EvalResult:
    samples: int
    per_prompt: list[dict] = field(default_factory=list)  # prompt, dataset, completions, scores, stopped

    def summary(self) -> dict:
        by_verifier: dict[str, list[dict]] = defaultdict(list)
        for p in self.per_prompt:
            by_verifier[p["dataset"].lower()].append(p)
        scores = [s for p in self.per_prompt for s in p["scores"]]
        stopped = [x for p in self.per_prompt for x in p["stopped"]]
        out = {
            "prompts": len(self.per_prompt),
            "samples_per_prompt": self.samples,
            "reward_mean": sum(scores) / max(len(scores), 1),
            "non_eos_rate": 1.0 - sum(stopped) / max(len(stopped), 1),
        }
        for name, group in sorted(by_verifier.items()):
            s = [x for p in group for x in p["scores"]]
            out[f"{name}/pass@1"] = sum(s) / max(len(s), 1)
            if self.samples > 1:
                out[f"{name}/pass@{self.samples}"] = sum(
                    pass_at_k(self.samples, sum(x >= CORRECT for x in p["scores"]), self.samples)
                    for p in group
                ) / len(group)
        return out


def evaluate_rows(group, tokenizer, rows: list[dict], runner, sampling: dict) -> EvalResult:
    """`rows` are tokenised RLVR rows (prompt_input_ids, prompt, ground_truth, dataset)."""
    from .sample import sample_and_score

    batch = sample_and_score(group, tokenizer, rows, runner, sampling)
    result = EvalResult(samples=batch.n)
    for row, comps, texts, scores in batch.per_prompt():
        result.per_prompt.append(
            {
                "prompt": row["prompt"],
                "dataset": row["dataset"],
                "ground_truth": row["ground_truth"],
                "completions": texts,
                "scores": scores,
                "stopped": [c.stopped for c in comps],
            }
        )
    return result


def load_eval_rows(mix: str, tokenizer, max_prompt_length: int, limit: int | None) -> list[dict]:
    """The first `limit` (or all) tokenised prompts of an RLVR-format mix."""
    from ..data.examples import take
    from ..data.mixes import load_mix
    from ..data.tokenize import tokenize_data

    loaded = load_mix(mix, kind="rlvr", label_check=label_check)
    tokenized = tokenize_data(loaded, tokenizer, "rlvr", max_prompt_length=max_prompt_length)
    n = len(tokenized.dataset) if limit is None else min(limit, len(tokenized.dataset))
    return take(tokenized.dataset, range(n))


def load_reward_modules(specs: list[str], where: str = "reward_modules") -> None:
    """Registers the user's reward modules (`file.py:fn`, `name=file.py:fn`, `pkg.mod:fn`) in this
    process, so rows can name them; a bad spec is a one-line ConfigError naming `where`."""
    from reward_fns.user_rewards import load_extra

    for i, spec in enumerate(specs):
        try:
            load_extra(spec)
        except ValueError as e:  # reward_fns' UnknownRewardError / RewardError
            raise ConfigError(f"{where}[{i}]: {e}") from None


def label_check(dataset: str, ground_truth) -> str | None:
    """data/'s per-row label check for RLVR rows: why the verifier named `dataset` cannot use the label
    (None when it can). An unknown verifier raises reward_fns' ValueError, which data/ reports with the
    file and line."""
    from reward_fns import label_problem

    return label_problem(dataset, ground_truth)


def reward_runner(reward_modules: list[str], where: str = "reward_modules", **kwargs):
    """A RewardRunner with the user's reward modules loaded (a bad spec is a one-line ConfigError)."""
    from reward_fns import RewardRunner

    load_reward_modules(reward_modules, where)
    try:
        return RewardRunner(extra_modules=list(reward_modules), **kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def check_verifiers(rows: list[dict], where: str) -> None:
    """Every verifier the rows name in their `dataset` column exists (user rewards loaded first)."""
    from reward_fns import get_spec

    for name in sorted({r["dataset"] for r in rows}):
        try:
            get_spec(name)
        except ValueError as e:
            raise DataError(f"{where}: rows name reward '{name}' in their dataset column: {e}") from None


def evaluate_model(model: str, spec: EvalSpec) -> EvalResult:
    """Starts an engine on `model`, evaluates the RLVR-format mix `spec.dataset_mix`, shuts it down."""
    from ..model.policy import load_tokenizer
    from ..model.source import check_model_source
    from .config import rollout_config
    from .group import RolloutGroup

    max_prompt_length = fit_context(model, spec.max_prompt_length, spec.max_tokens)
    check_model_source(model, "eval --model", kind="tokenizer")
    tokenizer = load_tokenizer(model)
    runner = reward_runner(spec.reward_modules, "eval --reward-module")  # before the rows name them
    group = None
    try:
        rows = load_eval_rows(spec.dataset_mix, tokenizer, max_prompt_length, spec.limit)
        check_verifiers(rows, str(spec.dataset_mix))  # before Ray and vLLM start
        cfg = rollout_config(
            model, seed=spec.seed, max_model_len=max_prompt_length + spec.max_tokens, options=spec.rollout
        )
        group = RolloutGroup(cfg)
        return evaluate_rows(group, tokenizer, rows, runner, spec.sampling())
    finally:
        if group is not None:
            group.shutdown()
        runner.close()


def model_context(model: str, model_field: str) -> int | None:
    """The model's positions (`max_position_embeddings`; None when its config has none): what a vLLM
    engine's `max_model_len` may not exceed. A model that is not there is a one-line error naming
    `model_field`."""
    from transformers import AutoConfig

    from ..model.lora import config_dir
    from ..model.source import check_model_source

    check_model_source(model, model_field)  # a missing dir, a file, no config.json, no network: one line
    try:
        config = AutoConfig.from_pretrained(config_dir(model))  # a LoRA adapter dir: its base's config
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_field}: cannot read {model}: {' '.join(str(e).split())[:200]}") from e
    return getattr(config, "max_position_embeddings", None)


def fit_context(
    model: str,
    max_prompt_length: int,
    max_tokens: int,
    model_field: str = "eval --model",
    tokens_field: str = "eval --max-tokens",
) -> int:
    """The prompt budget that fits the model's context next to `max_tokens` of response (prompts
    longer than it are dropped and counted by tokenisation); a one-line error naming `model_field` /
    `tokens_field` when nothing fits or the model is not there."""
    context = model_context(model, model_field)
    if not context or max_prompt_length + max_tokens <= context:
        return max_prompt_length
    if max_tokens >= context:
        raise ConfigError(
            f"{tokens_field}: {max_tokens} leaves no room for a prompt in {model}'s {context}-token context"
        )
    log.info("%s: prompts capped at %d tokens (%d-token context)", model_field, context - max_tokens, context)
    return context - max_tokens


def format_summary(summary: dict) -> str:
    width = max(len(k) for k in summary)
    return "\n".join(
        f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}"
        for k, v in summary.items()
    )


def eval_command(args) -> int:
    from ..config import from_dict

    if args.output and Path(args.output).is_dir():
        raise ConfigError(
            f"eval --output: {args.output} is a directory; give a file path for the JSONL results"
        )
    spec = from_dict(
        EvalSpec,
        {
            "dataset_mix": args.data,
            "samples": args.samples,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens,
            "limit": args.limit,
            "reward_modules": list(args.reward_module),
            "max_prompt_length": args.max_prompt_length,
        },
        EVAL_COMMAND,
    )
    res = evaluate_model(args.model, spec)
    summary = res.summary()
    print(f"eval of {args.model} on {args.data}:")
    print(format_summary(summary))
    if args.output:
        from ..io import atomic_write_text

        atomic_write_text(args.output, "".join(json.dumps(p) + "\n" for p in res.per_prompt))
        print(f"per-prompt results: {args.output}")
    return 0
