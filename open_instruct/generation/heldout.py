"""A recipe's held-out evaluation: the base model and every stage's model scored on one RLVR-format mix
by one engine, with each result cached next to the model it describes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text, read_json
from .evaluate import (
    EvalResult,
    EvalSpec,
    check_verifiers,
    evaluate_rows,
    fit_context,
    load_eval_rows,
    reward_runner,
)


def eval_settings(spec: EvalSpec, mix: str) -> dict:
    """What a cached result depends on besides the model digest."""
    return {
        "dataset_mix": mix,
        "max_tokens": spec.max_tokens,
        "limit": spec.limit,
        "samples": spec.samples,
        "temperature": spec.resolved_temperature,
        "seed": spec.seed,
        "max_prompt_length": spec.max_prompt_length,
        "reward_modules": list(spec.reward_modules),
        "rollout": dict(spec.rollout),
    }


class EvalSession:
    """One held-out eval engine reused for the base model and every stage: the next model's weights
    are synced into the running engine (the same path RLVR uses, exact to ~1e-6 in log-prob) instead
    of starting a new engine, which costs 10-20 s on CPU. A model with another architecture gets a
    fresh engine. Close the engine before a stage that needs the CPUs / GPUs (`close_engine`)."""

    def __init__(self, spec: EvalSpec, mix: str):
        self.spec, self.mix = spec, mix
        self.group = None
        self.runner = None
        self.arch_key = None
        self.rows_cache: dict[str, list] = {}

    @staticmethod
    def _arch_key(model_dir: str) -> str:
        local = Path(model_dir) / "config.json"
        if local.is_file():
            cfg = json.loads(local.read_text())
        else:  # a hub id (the base model)
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(model_dir).to_dict()
        for k in ("dtype", "torch_dtype", "transformers_version", "_name_or_path"):
            cfg.pop(k, None)
        return json.dumps(cfg, sort_keys=True)

    def _rows(self, tokenizer, prompt_budget: int) -> list[dict]:
        from ..data.tokenize import tokenizer_fingerprint

        key = f"{tokenizer_fingerprint(tokenizer)}:{prompt_budget}"
        if key not in self.rows_cache:
            rows = load_eval_rows(self.mix, tokenizer, prompt_budget, self.spec.limit)
            check_verifiers(rows, self.mix)
            self.rows_cache[key] = rows
        return self.rows_cache[key]

    def evaluate(self, model_dir: str) -> EvalResult:
        from safetensors.torch import load_file

        from ..model.lora import full_weights_dir
        from ..model.policy import load_tokenizer
        from ..model.source import check_model_source
        from .config import rollout_config
        from .group import RolloutGroup

        spec = self.spec
        model_dir = full_weights_dir(model_dir)  # a LoRA stage: its merged weights
        if self.runner is None:
            self.runner = reward_runner(spec.reward_modules, "eval.reward_modules")
        # prompt + response must fit the model's positions (a tiny base: 512), else vLLM refuses the
        # engine with a validation traceback: prompts are capped (logged), or nothing fits: one line
        budget = fit_context(
            model_dir, spec.max_prompt_length, spec.max_tokens, "eval model", "eval.max_tokens"
        )
        check_model_source(model_dir, "eval model", kind="tokenizer")
        tokenizer = load_tokenizer(model_dir)
        rows = self._rows(tokenizer, budget)
        key = self._arch_key(model_dir)
        if self.group is not None and key == self.arch_key:
            weights = {}
            for f in sorted(Path(model_dir).glob("*.safetensors")):
                weights.update(load_file(str(f)))
            self.group.sync_weights(weights)
        else:
            self.close_engine()
            cfg = rollout_config(
                model_dir,
                seed=spec.seed,
                max_model_len=budget + spec.max_tokens,
                options=spec.rollout,
                where="eval.rollout",
            )
            self.group = RolloutGroup(cfg)
            self.arch_key = key
        return evaluate_rows(self.group, tokenizer, rows, self.runner, spec.sampling())

    def close_engine(self) -> None:
        if self.group is not None:
            self.group.shutdown()
        self.group, self.arch_key = None, None

    def close(self) -> None:
        self.close_engine()
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def heldout_eval(session: EvalSession, model_dir: str, digest: str, dest: Path) -> dict:
    """Evaluates `model_dir` into `dest` (+ `<dest>_samples.jsonl`); a result for the same model digest
    and settings is reused. Returns the summary."""
    settings = eval_settings(session.spec, session.mix)
    old = read_json(dest) if dest.is_file() else None
    if old and old.get("model_digest") == digest and old.get("settings") == settings and "summary" in old:
        return old["summary"]
    t0 = time.time()
    res = session.evaluate(model_dir)
    summary = res.summary()
    atomic_write_text(
        dest.with_name(dest.stem + "_samples.jsonl"), "".join(json.dumps(p) + "\n" for p in res.per_prompt)
    )
    atomic_write_json(
        dest,
        {
            "model": model_dir,
            "model_digest": digest,
            "settings": settings,
            "summary": summary,
            "seconds": round(time.time() - t0, 2),
        },
    )
    return summary
