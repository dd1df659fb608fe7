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

log = logging.getLogger(__name__)


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
                    pass_at_k(self.samples, sum(x >= 0.5 for x in p["scores"]), self.samples) for p in group
                ) / len(group)
        return out


def evaluate_rows(
    group,
    tokenizer,
    rows: list[dict],
    runner,
    *,
    samples: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 256,
    seed: int = 0,
) -> EvalResult:
    """`rows` are tokenised RLVR rows (prompt_input_ids, prompt, ground_truth, dataset)."""
    sampling = {"n": samples, "temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    gen = group.generate([r["prompt_input_ids"] for r in rows], sampling)
    texts, truths, names, prompts = [], [], [], []
    for row, comps in zip(rows, gen.completions):
        for c in comps:
            texts.append(tokenizer.decode(c.token_ids, skip_special_tokens=True))
            truths.append(row["ground_truth"])
            names.append(row["dataset"])
            prompts.append(row["prompt"])
    scored = runner.score(texts, truths, names, prompts=prompts)
    result = EvalResult(samples=samples)
    i = 0
    for row, comps in zip(rows, gen.completions):
        k = len(comps)
        result.per_prompt.append(
            {
                "prompt": row["prompt"],
                "dataset": row["dataset"],
                "ground_truth": row["ground_truth"],
                "completions": texts[i : i + k],
                "scores": [float(x) for x in scored.scores[i : i + k]],
                "stopped": [c.stopped for c in comps],
            }
        )
        i += k
    return result


def evaluate_model(
    model: str,
    data: str,
    *,
    samples: int = 1,
    temperature: float | None = None,
    max_tokens: int = 256,
    limit: int | None = None,
    reward_modules: list[str] | None = None,
    rollout: dict | None = None,
    seed: int = 0,
    max_prompt_length: int = 2048,
) -> EvalResult:
    """Starts an engine on `model`, evaluates the RLVR-format mix `data`, shuts the engine down."""
    from reward_fns import RewardRunner, load_user_rewards

    from .config import from_dict
    from .data.mixes import load_mix
    from .data.tokenize import tokenize_data
    from .model.policy import load_tokenizer
    from .rl.rollout import RolloutConfig, RolloutGroup
    from .train.stage import rows as take_rows

    max_prompt_length = fit_context(model, max_prompt_length, max_tokens)
    for spec in reward_modules or []:
        load_user_rewards(spec)
    tokenizer = load_tokenizer(model)
    tokenized = tokenize_data(
        load_mix(data, kind="rlvr"), tokenizer, "rlvr", max_prompt_length=max_prompt_length
    )
    n = len(tokenized.dataset) if limit is None else min(limit, len(tokenized.dataset))
    rows = take_rows(tokenized.dataset, range(n))
    if temperature is None:
        temperature = 0.0 if samples == 1 else 1.0
    cfg = from_dict(
        RolloutConfig,
        {
            "model": model,
            "seed": seed,
            "dtype": "float32",
            "max_model_len": max_prompt_length + max_tokens,
            **(rollout or {}),
        },
        "rollout",
    )
    group = RolloutGroup(cfg)
    runner = RewardRunner(extra_modules=list(reward_modules or []))
    try:
        return evaluate_rows(
            group,
            tokenizer,
            rows,
            runner,
            samples=samples,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
        )
    finally:
        group.shutdown()
        runner.close()


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
    from transformers import AutoConfig

    from .errors import ConfigError

    p = Path(model).expanduser()
    if not p.is_dir() and (p.is_absolute() or model.startswith(".") or model.count("/") != 1):
        raise ConfigError(f"{model_field}: {model} is neither a local model dir nor a hub id (org/name)")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_field}: cannot read {model}: {' '.join(str(e).split())[:200]}") from e
    context = getattr(config, "max_position_embeddings", None)
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
    res = evaluate_model(
        args.model,
        args.data,
        samples=args.samples,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        limit=args.limit,
        reward_modules=args.reward_module,
        max_prompt_length=args.max_prompt_length,
    )
    summary = res.summary()
    print(f"eval of {args.model} on {args.data}:")
    print(format_summary(summary))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            for p in res.per_prompt:
                f.write(json.dumps(p) + "\n")
        print(f"per-prompt results: {out}")
    return 0
