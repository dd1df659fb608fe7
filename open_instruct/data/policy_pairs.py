"""On-policy preference pairs from verifiable prompts: the starting policy samples K answers per prompt
(vLLM), a verifier from `reward_fns` scores them, and each prompt with both a right and a wrong answer
gives a pair (chosen = a right answer, rejected = a wrong one). This is how DPO learns from the model's
*own* mistakes (Pang et al. 2024, "Iterative Reasoning Preference Optimization", DPO + NLL on such
pairs; Tülu 3 built its preference data on-policy too, judged by an LLM instead of a verifier).
Fixed, hand-made rejected answers are mistakes the model may never make, and DPO learns little
from them.

The DPO stage runs this when its config has `policy_pairs.prompts` (docs/dpo.md):

    policy_pairs:
      prompts: data_mixes/tiny_rlvr.yaml        # RLVR-format rows: messages, ground_truth, dataset
      eval_prompts: data_mixes/tiny_rlvr_eval.yaml
      samples: 8
      temperature: 1.0
      max_tokens: 32

The pairs are written (atomically) to `<output_dir>/policy_pairs/{train,eval}.jsonl`, with a sidecar
`.json` holding how they were made and what came out (prompts, pairs, prompts all right / all wrong).
A rerun with the same starting model, prompts and settings reuses them instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

CORRECT = 0.5  # a sample scoring >= this is right (the pass@k convention of evaluate.py)


@dataclass
class PolicyPairsConfig:
    """DPOConfig.policy_pairs. With `prompts` unset, DPO trains on `dataset_mix` as usual."""

    prompts: str | None = None  # RLVR-format mix or file: the training pairs' prompts
    eval_prompts: str | None = None  # held-out prompts: pairs for preference accuracy before/after
    samples: int = 8  # answers sampled per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256  # response length limit
    max_prompt_length: int = 1024  # longer prompts are dropped (counted)
    pairs_per_prompt: int = 1  # up to this many (right, wrong) pairs per prompt, no answer reused
    limit: int | None = None  # use the first N prompts of `prompts` only
    reward_modules: list[str] = field(default_factory=list)  # user verifiers: "file.py:fn"
    rollout: dict = field(default_factory=dict)  # engine options (rl/rollout.py RolloutConfig)

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def validate(self, where: str) -> None:
        if self.prompts == "":
            self.prompts = None
        if self.eval_prompts == "":
            self.eval_prompts = None
        if self.eval_prompts and not self.prompts:
            raise ConfigError(f"{where}.eval_prompts: set prompts too (the training pairs' prompts)")
        if self.samples < 2:
            raise ConfigError(f"{where}.samples: a pair needs >= 2 samples per prompt, got {self.samples}")
        if self.pairs_per_prompt < 1:
            raise ConfigError(f"{where}.pairs_per_prompt: must be >= 1, got {self.pairs_per_prompt}")
        if self.temperature <= 0:
            raise ConfigError(
                f"{where}.temperature: must be > 0 (greedy answers are all the same), got {self.temperature}"
            )
        for name in ("max_tokens", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{where}.limit: must be >= 1, got {self.limit}")


def select_pairs(
    answers: list[str], scores: list[float], pairs_per_prompt: int, rng: random.Random
) -> list[tuple[str, str]]:
    """(right, wrong) answer pairs of one prompt: distinct, non-blank answers, none used twice."""
    right, wrong, seen = [], [], set()
    for text, score in zip(answers, scores):
        if not text.strip() or text in seen:
            continue
        seen.add(text)
        (right if score >= CORRECT else wrong).append(text)
    rng.shuffle(right)
    rng.shuffle(wrong)
    return list(zip(right, wrong))[:pairs_per_prompt]


def _key(model_digest: str, data_hash: str, pc: PolicyPairsConfig, seed: int, split: str) -> str:
    settings = {k: v for k, v in asdict(pc).items() if k not in ("prompts", "eval_prompts", "rollout")}
    blob = json.dumps([model_digest, data_hash, settings, seed, split], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_prompts(mix: str, tokenizer, max_prompt_length: int, limit: int | None):
    """Tokenised RLVR rows (fails on bad rows in seconds, before an engine starts)."""
    from .mixes import load_mix
    from .tokenize import tokenize_data

    tokenized = tokenize_data(
        load_mix(mix, kind="rlvr"), tokenizer, "rlvr", max_prompt_length=max_prompt_length
    )
    n = len(tokenized.dataset) if limit is None else min(limit, len(tokenized.dataset))
    return tokenized, n


class PairMaker:
    """Samples from one model and writes pair files; one engine for all the splits it makes."""

    def __init__(
        self, model: str, model_digest: str, tokenizer, pc: PolicyPairsConfig, seed: int, dtype: str
    ):
        self.model, self.digest, self.tokenizer = model, model_digest, tokenizer
        self.pc, self.seed, self.dtype = pc, seed, dtype
        from ..evaluate import fit_context

        # a model with a short context (the tiny one: 512) gets a smaller prompt budget, not an engine error
        self.prompt_budget = fit_context(
            model, pc.max_prompt_length, pc.max_tokens, "policy_pairs (model)", "policy_pairs.max_tokens"
        )
        self._group = None
        self._runner = None

    def _engine(self):
        if self._group is None:
            from reward_fns import RewardRunner, load_user_rewards

            from ..config import from_dict
            from ..rl.rollout import RolloutConfig, RolloutGroup, engine_dtype

            for spec in self.pc.reward_modules:
                load_user_rewards(spec)
            engine = {
                "model": self.model,
                "seed": self.seed,
                "dtype": engine_dtype(self.dtype, self.pc.rollout.get("device", "cpu")),
                "max_model_len": self.prompt_budget + self.pc.max_tokens,
                **self.pc.rollout,
            }
            self._group = RolloutGroup(from_dict(RolloutConfig, engine, "policy_pairs.rollout"))
            self._runner = RewardRunner(extra_modules=list(self.pc.reward_modules))
        return self._group, self._runner

    def make(self, mix: str, dest: Path, split: str, limit: int | None = None) -> dict:
        """Writes `dest` (JSONL pairs) and `dest.json` (stats); reuses both when their key matches."""
        from ..train.stage import rows as take_rows

        tokenized, n = load_prompts(mix, self.tokenizer, self.prompt_budget, limit)
        key = _key(self.digest, tokenized.data_hash, self.pc, self.seed, split)
        meta_path = dest.with_suffix(".json")
        if dest.is_file() and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                meta = {}
            if meta.get("key") == key:
                log.info("policy pairs (%s): reusing %s (%d pairs)", split, dest, meta.get("pairs", 0))
                return meta
        rows = take_rows(tokenized.dataset, range(n))
        group, runner = self._engine()
        pc = self.pc
        t0 = time.time()
        sampling = {
            "n": pc.samples,
            "temperature": pc.temperature,
            "top_p": pc.top_p,
            "max_tokens": pc.max_tokens,
            "seed": self.seed,
        }
        gen = group.generate([r["prompt_input_ids"] for r in rows], sampling)
        texts, truths, names, prompts = [], [], [], []
        for row, comps in zip(rows, gen.completions):
            for c in comps:
                texts.append(self.tokenizer.decode(c.token_ids, skip_special_tokens=True))
                truths.append(row["ground_truth"])
                names.append(row["dataset"])
                prompts.append(row["prompt"])
        scored = runner.score(texts, truths, names, prompts=prompts)
        lines, all_right, all_wrong, i = [], 0, 0, 0
        for index, row in enumerate(rows):
            answers = texts[i : i + pc.samples]
            scores = scored.scores[i : i + pc.samples]
            i += pc.samples
            if all(s >= CORRECT for s in scores):
                all_right += 1
            elif all(s < CORRECT for s in scores):
                all_wrong += 1
            rng = random.Random(f"{self.seed}/{split}/{index}")
            for good, bad in select_pairs(answers, scores, pc.pairs_per_prompt, rng):
                lines.append(
                    json.dumps(
                        {
                            "chosen": row["messages"] + [{"role": "assistant", "content": good}],
                            "rejected": row["messages"] + [{"role": "assistant", "content": bad}],
                        },
                        ensure_ascii=False,
                    )
                )
        meta = {
            "key": key,
            "model": self.model,
            "model_digest": self.digest,
            "prompts_mix": mix,
            "prompts_hash": tokenized.data_hash,
            "prompts": n,
            "prompts_dropped_too_long": tokenized.num_dropped,
            "samples_per_prompt": pc.samples,
            "sample_accuracy": sum(s >= CORRECT for s in scored.scores) / max(len(scored.scores), 1),
            "prompts_all_right": all_right,
            "prompts_all_wrong": all_wrong,
            "pairs": len(lines),
            "generated_tokens": gen.num_tokens,
            "seconds": round(time.time() - t0, 2),
        }
        if not lines:
            raise ConfigError(
                f"policy_pairs: no prompt of {mix} got both a right and a wrong answer in {pc.samples} samples "
                f"(sample accuracy {meta['sample_accuracy']:.1%}); raise samples or temperature, or use "
                f"dataset_mix with ready-made pairs"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(dest, "\n".join(lines) + "\n")
        _write_atomic(meta_path, json.dumps(meta, indent=1))
        log.info(
            "policy pairs (%s): %d pairs from %d prompts (sample accuracy %.1f%%, %d all right, %d all wrong) in %.0fs",
            split,
            len(lines),
            n,
            100 * meta["sample_accuracy"],
            all_right,
            all_wrong,
            meta["seconds"],
        )
        return meta

    def close(self) -> None:
        if self._group is not None:
            self._group.shutdown()
            self._group = None
        if self._runner is not None:
            self._runner.close()
            self._runner = None
