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
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, read_json
from .evaluate import CORRECT, check_verifiers, fit_context, load_reward_modules, reward_runner

log = logging.getLogger(__name__)


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
    rollout: dict = field(default_factory=dict)  # engine options (generation/config.py RolloutConfig)

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


def load_prompts(mix: str, tokenizer, max_prompt_length: int, limit: int | None):
    """Tokenised RLVR rows (fails on bad rows in seconds, before an engine starts)."""
    from ..data.mixes import load_mix
    from ..data.tokenize import tokenize_data
    from .evaluate import label_check

    loaded = load_mix(mix, kind="rlvr", label_check=label_check)
    tokenized = tokenize_data(loaded, tokenizer, "rlvr", max_prompt_length=max_prompt_length)
    n = len(tokenized.dataset) if limit is None else min(limit, len(tokenized.dataset))
    return tokenized, n


class PairMaker:
    """Samples from one model and writes pair files; one engine for all the splits it makes."""

    def __init__(
        self, model: str, model_digest: str, tokenizer, pc: PolicyPairsConfig, seed: int, dtype: str
    ):
        self.model, self.digest, self.tokenizer = model, model_digest, tokenizer
        self.pc, self.seed, self.dtype = pc, seed, dtype
        # a model with a short context (the tiny one: 512) gets a smaller prompt budget, not an engine error
        self.prompt_budget = fit_context(
            model, pc.max_prompt_length, pc.max_tokens, "policy_pairs (model)", "policy_pairs.max_tokens"
        )
        self._group = None
        self._runner = None

    def _engine(self):
        if self._group is None:
            from .config import rollout_config
            from .group import RolloutGroup

            self._runner = reward_runner(self.pc.reward_modules, "policy_pairs.reward_modules")
            cfg = rollout_config(
                self.model,
                seed=self.seed,
                learner_dtype=self.dtype,
                max_model_len=self.prompt_budget + self.pc.max_tokens,
                options=self.pc.rollout,
                where="policy_pairs.rollout",
            )
            self._group = RolloutGroup(cfg)
        return self._group, self._runner

    def make(self, mix: str, dest: Path, split: str, limit: int | None = None) -> dict:
        """Writes `dest` (JSONL pairs) and `dest.json` (stats); reuses both when their key matches."""
        from ..data.examples import take
        from .sample import sample_and_score

        load_reward_modules(self.pc.reward_modules, "policy_pairs.reward_modules")  # before rows name them
        tokenized, n = load_prompts(mix, self.tokenizer, self.prompt_budget, limit)
        key = _key(self.digest, tokenized.data_hash, self.pc, self.seed, split)
        meta_path = dest.with_suffix(".json")
        meta = read_json(meta_path) if dest.is_file() else None
        if meta and meta.get("key") == key:
            log.info("policy pairs (%s): reusing %s (%d pairs)", split, dest, meta.get("pairs", 0))
            return meta
        rows = take(tokenized.dataset, range(n))
        check_verifiers(rows, mix)
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
        batch = sample_and_score(group, self.tokenizer, rows, runner, sampling)
        lines, all_right, all_wrong = [], 0, 0
        for index, (row, _, answers, scores) in enumerate(batch.per_prompt()):
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
            "sample_accuracy": sum(s >= CORRECT for s in batch.scores) / max(len(batch.scores), 1),
            "prompts_all_right": all_right,
            "prompts_all_wrong": all_wrong,
            "pairs": len(lines),
            "generated_tokens": batch.generation.num_tokens,
            "seconds": round(time.time() - t0, 2),
        }
        if not lines:
            raise ConfigError(
                f"policy_pairs: no prompt of {mix} got both a right and a wrong answer in {pc.samples} samples "
                f"(sample accuracy {meta['sample_accuracy']:.1%}); raise samples or temperature, or use "
                f"dataset_mix with ready-made pairs"
            )
        atomic_write_text(dest, "\n".join(lines) + "\n")
        atomic_write_json(meta_path, meta)
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
