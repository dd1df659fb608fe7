"""RLVR stage: reinforcement learning with verifiable rewards, PPO (Tülu 3) or GRPO (Tülu 3.1).

    open-instruct rlvr --config rlvr.yaml [--set key=value ...]

One step:
  prompts (seeded order, resumable cursor) -> vLLM engines in Ray actors -> completions + finish reasons
  -> reward_fns (verifier by the row's `dataset`) -> score x verification_reward, non-EOS penalty
  -> learner forwards (old log-probs, reference log-probs, values) -> advantages (GAE or GRPO groups)
  -> K epochs x M mini-batches of clipped updates on the engine -> weight sync to every engine.

The learner may run as several processes (torchrun; DDP or DeepSpeed ZeRO-2/3 through the shared
Engine). Process 0 alone drives the engines and the rewards; it broadcasts each scored batch, every
process runs the no-grad forwards on its 1/N of the rows and all-gathers them (so advantages are the
same everywhere), then trains on its 1/N of every mini-batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import from_dict, load_config, to_dict
from ..errors import ConfigError, DataError
from ..model.value import ActorCritic, load_value_model, save_value_model
from ..track import Tracker, plot_metrics
from ..train import checkpoint as ckpt
from ..train import stage
from ..train.engine import BatchPlan, Engine, LossOut, TrainConfig
from . import advantages as adv
from . import losses as L

log = logging.getLogger(__name__)


@dataclass
class RLVRConfig(TrainConfig):
    """Field names follow open-instruct's RLVR scripts; defaults are Tülu 3 8B RLVR (PPO) from
    REFERENCE.md section 1 unless noted. Inherited: model, optimizer, checkpoint and tracking fields.
    `per_device_train_batch_size` is the number of sequences per learner micro-batch."""

    algorithm: Literal["ppo", "grpo"] = "ppo"
    learning_rate: float = 3e-7
    warmup_ratio: float = 0.0
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"
    seed: int = 3
    # prompts and generation
    max_prompt_length: int = 2048
    response_length: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    num_unique_prompts_rollout: int = 64  # prompts per RL step
    num_samples_per_prompt_rollout: int = 1  # GRPO: the group size (Tülu 3.1: 16)
    total_episodes: int | None = None  # episodes = prompts x samples; steps = total / per step
    stop_strings: list[str] = field(default_factory=list)
    # optimisation
    num_epochs: int = 4  # PPO epochs over each batch
    num_mini_batches: int = 1
    cliprange: float = 0.2
    beta: float = 0.05  # KL coefficient
    kl_estimator: Literal["k1", "k2", "k3"] | None = (
        None  # default: k1 (ppo, in the reward), k3 (grpo, in the loss)
    )
    # PPO
    value_model_name_or_path: str | None = None  # default: start from the policy with a zero head
    gamma: float = 1.0
    lam: float = 0.95
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    # GRPO
    grpo_normalize_std: bool = True
    # rewards
    verification_reward: float = 10.0
    non_stop_penalty: bool = True
    penalty_reward_value: float = -10.0
    reward_modules: list[str] = field(default_factory=list)  # user rewards: "my_rewards.py:fn"
    reward_timeout_s: float = 10.0
    reward_workers: int = 1
    # engines (RolloutConfig fields, model filled in from model_name_or_path)
    rollout: dict = field(default_factory=dict)
    async_mode: bool = False  # one-step off-policy: generate batch t+1 while training on t
    preflight_max_kl: float = 0.01
    preflight_prompts: int = 8
    # held-out evaluation
    eval_dataset_mix: str | None = None
    eval_every: int = 0  # RL steps; 0: only before and after training
    eval_limit: int | None = None
    eval_temperature: float = 0.0

    def validate(self, where: str) -> None:
        self.dataset_mix = self.dataset_mix or ""
        super().validate(where)
        if self.algorithm == "grpo" and self.num_samples_per_prompt_rollout < 2:
            raise ConfigError(f"{where}.num_samples_per_prompt_rollout: GRPO needs >= 2 samples per prompt")
        if self.total_episodes is None and self.max_train_steps is None:
            raise ConfigError(f"{where}: set total_episodes or max_train_steps")
        batch = self.num_unique_prompts_rollout * self.num_samples_per_prompt_rollout
        if batch % self.num_mini_batches:
            raise ConfigError(
                f"{where}.num_mini_batches: {self.num_mini_batches} does not divide the rollout "
                f"batch {batch} = {self.num_unique_prompts_rollout} prompts x "
                f"{self.num_samples_per_prompt_rollout} samples"
            )
        if (batch // self.num_mini_batches) % self.per_device_train_batch_size:
            raise ConfigError(
                f"{where}.per_device_train_batch_size: {self.per_device_train_batch_size} does not "
                f"divide the mini-batch of {batch // self.num_mini_batches} sequences"
            )
        self.rollout_config()  # unknown rollout keys fail here

    # -- derived ------------------------------------------------------------------------------------
    @property
    def rollout_batch(self) -> int:
        return self.num_unique_prompts_rollout * self.num_samples_per_prompt_rollout

    @property
    def num_rl_steps(self) -> int:
        if self.max_train_steps:
            return self.max_train_steps
        return max(1, self.total_episodes // self.rollout_batch)

    @property
    def estimator(self) -> str:
        return self.kl_estimator or ("k1" if self.algorithm == "ppo" else "k3")

    def rollout_config(self):
        from .rollout import RolloutConfig, engine_dtype

        learner_on_gpu = self.rollout.get("device", "cpu") == "cuda" and torch.cuda.is_available()
        data = {
            "seed": self.seed,
            "max_model_len": self.max_prompt_length + self.response_length,
            "dtype": engine_dtype(self.dtype, self.rollout.get("device", "cpu")),
            # the learner's processes on this node hold GPUs 0..n-1; the engines get the others
            "learner_gpus": int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if learner_on_gpu else 0,
            **self.rollout,
            "model": self.model_name_or_path,
        }
        return from_dict(RolloutConfig, data, "rollout")

    def engine_config(self, world_size: int = 1, where: str = "rlvr") -> TrainConfig:
        """The TrainConfig the engine sees: accumulation = micro-batches per process per mini-batch."""
        mini = self.rollout_batch // self.num_mini_batches
        per_step = self.per_device_train_batch_size * world_size
        if mini % per_step:
            raise ConfigError(
                f"{where}.per_device_train_batch_size: {self.per_device_train_batch_size} sequences x "
                f"{world_size} processes does not divide the mini-batch of {mini} sequences"
            )
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        base.update(gradient_accumulation_steps=mini // per_step, total_batch_size=None)
        return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------------
# experience: sequences + everything the update needs, as padded [N, T] tensors


@dataclass
class Experience:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != -100

    def slice(self, lo: int, hi: int) -> Experience:
        """Rows lo..hi-1 at the full width (so per-process results concatenate)."""
        return Experience(
            **{
                f.name: (t[lo:hi] if (t := getattr(self, f.name)) is not None else None)
                for f in dataclasses.fields(self)
            }
        )

    def rows(self, idx) -> dict:
        """A micro-batch of rows `idx`, trimmed to its longest sequence."""
        idx = torch.as_tensor(idx)
        width = int(self.attention_mask[idx].sum(1).max())
        out = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t is not None:
                out[f.name] = t[idx, :width]
        return out


def build_experience(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Experience:
    n = len(responses)
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    att = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        att[i, : len(seq)] = 1
        pos[i, : len(seq)] = torch.arange(len(seq))
        if r:
            labels[i, len(p) : len(seq)] = torch.tensor(r)
    return Experience(ids, att, pos, labels)


@torch.no_grad()
def forward_in_chunks(fn, exp: Experience, chunk: int) -> torch.Tensor:
    """Runs `fn(batch) -> [b, t]` over row chunks and re-pads to the full width."""
    out = torch.zeros(exp.input_ids.shape, dtype=torch.float32)
    for s in range(0, exp.input_ids.shape[0], chunk):
        idx = list(range(s, min(s + chunk, exp.input_ids.shape[0])))
        batch = exp.rows(idx)
        res = fn(batch)
        out[idx[0] : idx[-1] + 1, : res.shape[1]] = res.float().cpu()
    return out


# ---------------------------------------------------------------------------------------------------
# the update


def make_loss_fn(cfg: RLVRConfig):
    def loss_fn(model, mb: dict) -> LossOut:
        batch = {k: mb[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}
        mask = mb["labels"] != -100
        units = float(mask.sum())
        (lp, ent), values = model(batch, with_values=cfg.algorithm == "ppo", return_entropy=True)
        if cfg.algorithm == "ppo":
            pg = L.ppo_policy_loss(
                lp, mb["old_logp"], mb["advantages"], mask, cfg.cliprange, agg="token", token_normalizer=1.0
            )
            vf = L.value_loss(
                values,
                mb["values"],
                mb["returns"],
                mask,
                cfg.cliprange_value,
                agg="token",
                token_normalizer=1.0,
            )
            total = pg.loss + cfg.vf_coef * vf.loss
            metrics = {
                "policy_loss": float(pg.loss.detach()),
                "value_loss": float(vf.loss.detach()),
                "clip_fraction": float(pg.clip_fraction) * units,
                "value_clip_fraction": float(vf.clip_fraction) * units,
                "approx_kl": float(pg.approx_kl) * units,
            }
        else:
            out = L.grpo_loss(
                lp,
                mb["old_logp"] if "old_logp" in mb else lp.detach(),  # see RLVRRun.learn: single update
                mb.get("ref_logp"),
                mb["advantages"],
                mask,
                cfg.cliprange,
                cfg.beta,
                kl_estimator=cfg.estimator,
                agg="token",
                token_normalizer=1.0,
            )
            total = out.loss
            metrics = {
                "policy_loss": float(out.policy_loss.detach()),
                "clip_fraction": float(out.clip_fraction) * units,
                "approx_kl": float(out.approx_kl) * units,
                "kl_loss": float(out.kl.detach()),
            }
        metrics["entropy"] = float(L.masked_sum(ent.detach(), mask))
        return LossOut(total=total, units=units, metrics=metrics)

    return loss_fn


# ---------------------------------------------------------------------------------------------------
# the stage


class RLVRRun:
    """Holds the learner, the reference, the engines and the reward runner of one RLVR stage."""

    def __init__(self, cfg: RLVRConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.engine = Engine(cfg.engine_config(world), self.out, reduction="sum")
        self.is_main = self.engine.is_main
        self.tokenizer = stage.load_stage_tokenizer(cfg)
        self.data = self._load_prompts(cfg.dataset_mix)
        self.eval_data = self._load_prompts(cfg.eval_dataset_mix) if cfg.eval_dataset_mix else None
        self.rewards = self._make_rewards() if self.is_main else None  # process 0 scores for all
        self.plan = BatchPlan(
            len(self.data.dataset),
            cfg.num_unique_prompts_rollout,
            num_epochs=math.inf,
            seed=cfg.seed,
            max_steps=cfg.num_rl_steps,
        )
        if self.plan.steps_per_epoch == 0:
            raise ConfigError(
                f"{cfg.dataset_mix}: {len(self.data.dataset)} prompts, fewer than "
                f"num_unique_prompts_rollout={cfg.num_unique_prompts_rollout}"
            )
        policy = stage.load_policy(cfg, self.tokenizer)
        self.policy = policy
        self.ref = None
        if cfg.beta > 0:
            # under ZeRO-3 the policy was loaded as shards, and a copy of shards is no model: the
            # reference is loaded on its own (sharded too) and run by its own DeepSpeed engine
            ref = (
                stage.load_policy(cfg, self.tokenizer, trainable=False).model
                if self.engine.zero3
                else policy.frozen_copy().model
            )
            self.ref = self.engine.prepare_frozen(ref)
        value = None
        if cfg.algorithm == "ppo":
            value = load_value_model(
                cfg.value_model_name_or_path or cfg.model_name_or_path,
                dtype=cfg.dtype,
                attn_implementation=cfg.attn_implementation,
                gradient_checkpointing=cfg.gradient_checkpointing,
                trust_remote_code=cfg.trust_remote_code,
                allow_pickle=cfg.allow_pickle,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        self.module = ActorCritic(policy.model, value)
        opt_steps = cfg.num_rl_steps * cfg.num_epochs * cfg.num_mini_batches
        self.engine.prepare(self.module, opt_steps)
        self.loss_fn = make_loss_fn(cfg)
        self.group = None

    # ---- setup helpers ---------------------------------------------------------------------------
    def _load_prompts(self, mix: str):
        from ..data.mixes import load_mix
        from ..data.tokenize import tokenize_data

        loaded = load_mix(mix, kind="rlvr")
        return tokenize_data(loaded, self.tokenizer, "rlvr", max_prompt_length=self.cfg.max_prompt_length)

    def _make_rewards(self):
        """The reward runner (user modules load here, so a bad spec fails now) after checking that
        every verifier named by the prompts' `dataset` column exists."""
        from reward_fns import RewardRunner, get_spec

        try:
            runner = RewardRunner(
                timeout_s=self.cfg.reward_timeout_s,
                num_workers=self.cfg.reward_workers,
                extra_modules=list(self.cfg.reward_modules),
            )
        except ValueError as e:
            raise ConfigError(f"reward_modules: {e}") from None
        names = set(self.data.dataset.unique("dataset"))
        if self.eval_data is not None:
            names |= set(self.eval_data.dataset.unique("dataset"))
        for name in sorted(names):
            try:
                get_spec(name)
            except ValueError as e:
                runner.close()
                raise DataError(
                    f"{self.cfg.dataset_mix}: dataset column names reward '{name}': {e}"
                ) from None
        return runner

    def policy_model(self):
        return self.engine.unwrapped().policy

    def start_engines(self) -> None:
        from .rollout import RolloutGroup

        self.group = RolloutGroup(self.cfg.rollout_config())
        log.info("rlvr: %d vLLM engine(s) ready in %.1fs", len(self.group.engines), self.group.start_seconds)

    def _gathers_weights(self) -> bool:
        """Whether the full weights must be collected from every process (ZeRO-3 shards them)."""
        return self.engine.world_size > 1 or self.engine.zero3

    def policy_state_dict(self) -> dict | None:
        """The policy's full weights on process 0 (None elsewhere). Every process must call it."""
        if not self._gathers_weights():
            return self.policy_model().state_dict()
        full = self.engine.full_state_dict()
        if not self.is_main:
            return None
        return _submodule(full, "policy")

    def sync(self) -> float:
        """Sends the learner's weights to every engine. Every process must call it."""
        t0 = time.perf_counter()
        weights = self.policy_state_dict()
        if self.is_main:
            self.group.sync_weights(weights)
        return time.perf_counter() - t0

    def preflight(self) -> None:
        """Process 0: the engines and the learner must agree on log-probs before training starts."""
        from .preflight import hf_logprob_fn, preflight_kl

        if self.engine.world_size > 1 and self.engine.zero3:
            # a forward on one process would wait forever for the other processes' shards
            log.warning("rlvr preflight skipped: the learner is sharded (ZeRO-3) over several processes")
            return

        rows = stage.rows(self.data.dataset, range(min(self.cfg.preflight_prompts, len(self.data.dataset))))
        report = preflight_kl(
            self.group,
            hf_logprob_fn(self.policy_model(), pad_id=self.tokenizer.pad_token_id),
            [r["prompt_input_ids"] for r in rows],
            sampling={
                "temperature": 1.0,
                "max_tokens": min(32, self.cfg.response_length),
                "n": 1,
                "seed": self.cfg.seed,
            },
            max_kl=self.cfg.preflight_max_kl,
            learner_dtype=str(next(self.policy_model().parameters()).dtype),
        )
        log.info("rlvr preflight: %s", report.line())

    # ---- one RL step -----------------------------------------------------------------------------
    def sampling(self, step: int) -> dict:
        s = {
            "n": self.cfg.num_samples_per_prompt_rollout,
            "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.response_length,
            "seed": (self.cfg.seed * 1_000_003 + step * 7919) % (2**31),
        }
        if self.cfg.stop_strings:
            s["stop"] = list(self.cfg.stop_strings)
        return s

    def generate(self, step: int):
        rows = stage.rows(self.data.dataset, self.plan.indices(step))
        gen = self.group.generate([r["prompt_input_ids"] for r in rows], self.sampling(step))
        return rows, gen

    def score(self, rows: list[dict], gen) -> dict:
        """Process 0: the generated batch with its verifiable scores, as plain data to broadcast."""
        tok = self.tokenizer
        prompts, responses, stopped, texts, truths, datasets, prompt_texts = [], [], [], [], [], [], []
        for row, samples in zip(rows, gen.completions):
            for c in samples:
                prompts.append(list(row["prompt_input_ids"]))
                responses.append(list(c.token_ids))
                stopped.append(c.stopped)
                texts.append(tok.decode(c.token_ids, skip_special_tokens=True))
                truths.append(row["ground_truth"])
                datasets.append(row["dataset"])
                prompt_texts.append(row["prompt"])
        t_reward = time.perf_counter()
        scored = self.rewards.score(texts, truths, datasets, prompts=prompt_texts, token_ids=responses)
        return {
            "prompts": prompts,
            "responses": responses,
            "stopped": stopped,
            "scores": list(scored.scores),
            "stats": {
                **scored.metrics("reward"),
                "reward_seconds": time.perf_counter() - t_reward,
                "gen_tokens_per_s": gen.tokens_per_second,
                "gen_seconds": gen.seconds,
                "engine_restarts": gen.restarts,
            },
        }

    def share(self, batch: dict | None) -> dict:
        """Process 0's scored batch on every process."""
        if self.engine.world_size == 1:
            return batch
        from accelerate.utils import broadcast_object_list

        box = [batch]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def forward_rows(self, fn, exp: Experience, chunk: int) -> torch.Tensor:
        """`fn` over all rows: each process does its 1/N of them, then all-gather (rank order)."""
        world, rank = self.engine.world_size, self.engine.process_index
        if world == 1:
            return forward_in_chunks(fn, exp, chunk)
        per = exp.input_ids.shape[0] // world
        mine = forward_in_chunks(fn, exp.slice(rank * per, (rank + 1) * per), chunk)
        return self.engine.accelerator.gather(mine.to(self.engine.device)).cpu()

    def learn(self, step: int, batch: dict) -> dict:
        cfg, tok = self.cfg, self.tokenizer
        n = cfg.num_samples_per_prompt_rollout
        prompts, responses = batch["prompts"], batch["responses"]
        scores = torch.tensor(batch["scores"], dtype=torch.float32)
        finished = torch.tensor(batch["stopped"])

        exp = build_experience(prompts, responses, tok.pad_token_id)
        mask = exp.mask
        chunk = max(cfg.per_device_train_batch_size, 1)
        self.module.eval()
        policy = self.policy_model()
        from ..model.policy import token_logprobs
        from ..model.value import token_values

        # One GRPO update on fresh samples with no reference: the policy that generated the batch is the
        # one being updated, so its log-probs come free from the update's own forward (detached) and a
        # whole no-grad pass over the batch is skipped (TRL does the same when num_iterations is 1).
        single_update = (
            cfg.algorithm == "grpo" and cfg.num_epochs == 1 and cfg.num_mini_batches == 1 and self.ref is None
        )
        if not single_update:
            exp.old_logp = self.forward_rows(lambda b: token_logprobs(policy, b), exp, chunk)
        exp.ref_logp = (
            self.forward_rows(lambda b: token_logprobs(self.ref, b), exp, chunk)
            if self.ref is not None
            else exp.old_logp
        )
        penalty = cfg.penalty_reward_value if cfg.non_stop_penalty else None
        if cfg.algorithm == "ppo":
            exp.values = self.forward_rows(
                lambda b: token_values(self.engine.unwrapped().value, b), exp, chunk
            )
            shaped = adv.shape_rewards(
                scores,
                finished,
                mask,
                exp.old_logp,
                exp.ref_logp,
                kl_beta=cfg.beta,
                verification_reward=cfg.verification_reward,
                non_eos_penalty=penalty,
                kl_estimator=cfg.estimator,
            )
            advantages, exp.returns = adv.gae(shaped.rewards, exp.values * mask, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = adv.whiten(advantages, mask)
            exp.advantages = advantages * mask
            seq_kl = shaped.seq_kl
        else:
            final = scores * cfg.verification_reward
            if penalty is not None:
                final = torch.where(finished, final, torch.full_like(final, penalty))
            per_seq = adv.grpo_advantages(final, n, normalize_std=cfg.grpo_normalize_std)
            exp.advantages = per_seq[:, None] * mask  # every token of a response shares its advantage
            seq_kl = (
                torch.zeros(mask.shape[0])  # no reference: KL 0 by definition
                if exp.ref_logp is None or exp.old_logp is None
                else L.masked_sum(L.kl_estimate(exp.old_logp, exp.ref_logp, "k1"), mask, dim=-1)
            )

        # K epochs x M mini-batches, each one optimizer step of micro-batches (this process: its 1/N)
        total = exp.input_ids.shape[0]
        mini = total // cfg.num_mini_batches
        per_proc = mini // self.engine.world_size
        rank = self.engine.process_index
        t_train = time.perf_counter()
        sums: dict[str, float] = {}
        updates = 0
        for epoch in range(cfg.num_epochs):
            order = np.random.default_rng([cfg.seed, step, epoch]).permutation(total)
            for m in range(cfg.num_mini_batches):
                rows_m = order[m * mini : (m + 1) * mini][rank * per_proc : (rank + 1) * per_proc]
                micro = [exp.rows(sorted(rows_m[s : s + chunk].tolist())) for s in range(0, per_proc, chunk)]
                out = self.engine.step(micro, self.loss_fn)
                updates += 1
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
        train_seconds = time.perf_counter() - t_train
        train_tokens = int(exp.attention_mask.sum()) * cfg.num_epochs

        metrics = {
            k: v / updates
            for k, v in sums.items()
            if k
            in (
                "policy_loss",
                "value_loss",
                "clip_fraction",
                "value_clip_fraction",
                "approx_kl",
                "entropy",
                "kl_loss",
                "grad_norm",
            )
        }
        metrics["lr"] = sums.get("lr", 0.0) / updates
        lengths = mask.sum(-1).float()
        metrics.update(
            {
                "reward_mean": float(scores.mean()),
                "non_eos_rate": float((~finished).float().mean()),
                "kl": float(seq_kl.mean()),
                "response_length": float(lengths.mean()),
                "train_tokens_per_s": train_tokens / train_seconds,
                **batch["stats"],
            }
        )
        if cfg.algorithm == "ppo":
            metrics["explained_variance"] = float(L.explained_variance(exp.values, exp.returns, mask))
        return metrics

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        from ..evaluate import evaluate_rows

        rows = stage.rows(self.eval_data.dataset, range(len(self.eval_data.dataset)))
        if self.cfg.eval_limit:
            rows = rows[: self.cfg.eval_limit]
        res = evaluate_rows(
            self.group,
            self.tokenizer,
            rows,
            self.rewards,
            samples=1,
            temperature=self.cfg.eval_temperature,
            max_tokens=self.cfg.response_length,
            seed=self.cfg.seed,
        )
        return {f"eval/{k}": v for k, v in res.summary().items() if isinstance(v, (int, float))}

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, engine, main = self.cfg, self.engine, self.is_main
        if main:
            stage.write_resolved_config(cfg, self.out)
        state = engine.resume()
        start = state["step"] if state else 0
        if state and state.get("data_hash") != self.data.data_hash:
            raise ConfigError(
                f"{self.out}: the checkpoint was trained on different prompts; use a new output_dir"
            )
        if main:
            self.start_engines()
        if start:
            self.sync()  # the resumed weights differ from the checkpoint the engines loaded
        if main:
            self.preflight()
        tracker = Tracker(
            self.out,
            total_steps=self.plan.num_steps,
            start_step=start,
            desc=f"rlvr-{cfg.algorithm}",
            wandb_project=cfg.wandb_project,
            wandb_run_name=cfg.wandb_run_name,
            config=to_dict(cfg),
            bar_keys=("reward_mean", "kl", "response_length", "gen_tokens_per_s"),
            enabled=main,
        )
        evals = {}
        if not main:
            pass  # process 0 evaluates
        elif self.eval_data is not None and start == 0:
            evals["before"] = self.evaluate()
            tracker.log(0, evals["before"])
        elif self.eval_data is not None:  # resumed: the step-0 evaluation is in metrics.jsonl
            from ..track import read_metrics

            first = [r for r in read_metrics(self.out / "metrics.jsonl") if r.get("step") == 0]
            evals["before"] = {k: v for k, v in (first[0] if first else {}).items() if k.startswith("eval/")}
        pool = ThreadPoolExecutor(max_workers=1) if cfg.async_mode and main else None
        pending = pool.submit(self.generate, start) if pool and start < self.plan.num_steps else None
        try:
            for step in range(start, self.plan.num_steps):
                batch = None
                if pool is not None:
                    rows, gen = pending.result()
                    # one-step off-policy: engines generate batch t+1 (with the weights that made t)
                    # while the learner trains on batch t
                    nxt = step + 1
                    pending = pool.submit(self.generate, nxt) if nxt < self.plan.num_steps else None
                    batch = self.score(rows, gen)
                elif main:
                    batch = self.score(*self.generate(step))
                metrics = self.learn(step, self.share(batch))
                if pending is not None:
                    pending.result()  # weights may only change between generations
                metrics["weight_sync_s"] = self.sync()
                metrics["episodes"] = (step + 1) * cfg.rollout_batch
                last = step + 1 == self.plan.num_steps
                if (
                    main
                    and self.eval_data is not None
                    and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0))
                ):
                    metrics.update(self.evaluate())
                    if last:
                        evals["after"] = {k: v for k, v in metrics.items() if k.startswith("eval/")}
                tracker.log(step + 1, metrics)
                if (
                    cfg.checkpointing_steps
                    and (step + 1) % cfg.checkpointing_steps == 0
                    and step + 1 < self.plan.num_steps
                ):
                    engine.save_checkpoint(step + 1, {"data_hash": self.data.data_hash})
        finally:
            tracker.close()
            if pool:
                pool.shutdown(wait=True)
        return evals

    def finish(self, evals: dict) -> str | None:
        """Publishes the model (process 0; every process must call it). Returns its digest."""
        out = self.out
        model = self.engine.unwrapped()
        full = self.engine.full_state_dict() if self._gathers_weights() else None
        if not self.is_main:
            return None
        tmp = out / ".tmp-model"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        self.policy.model = model.policy
        self.policy.save(tmp, state_dict=_submodule(full, "policy") if full is not None else None)
        if model.value is not None:
            value_sd = _submodule(full, "value") if full is not None else None
            save_value_model(model.value, self.tokenizer, out / "value_model", state_dict=value_sd)
        digest = ckpt.publish_model(tmp, out)
        plot_metrics(
            out / "metrics.jsonl",
            out / "rlvr_curves.png",
            [
                ("verifiable reward", ["reward_mean", "eval/reward_mean"]),
                ("KL to reference", ["kl"]),
                ("response length", ["response_length"]),
                ("losses", ["policy_loss", "value_loss"]),
            ],
            title=f"rlvr ({self.cfg.algorithm}): {out}",
        )
        (out / "eval.json").write_text(json.dumps(evals, indent=1))
        (out / "train_summary.json").write_text(
            json.dumps({"stage": "rlvr", "model_digest": digest}, indent=1)
        )
        return digest

    def close(self) -> None:
        if self.group is not None:
            self.group.shutdown()
        if self.rewards is not None:
            self.rewards.close()


def _submodule(state_dict: dict, name: str) -> dict:
    """The entries of ActorCritic's `name` part ("policy" / "value"), without the prefix."""
    prefix = name + "."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def run_rlvr(cfg: RLVRConfig) -> Path:
    if stage.already_done(cfg):
        return Path(cfg.output_dir)
    run = RLVRRun(cfg)
    try:
        evals = run.run()
        run.finish(evals)
        run.engine.accelerator.wait_for_everyone()
    finally:
        run.close()
    return Path(cfg.output_dir)


def rlvr_command(args) -> int:
    if not args.config and not args.overrides:
        raise ConfigError("rlvr: give --config FILE.yaml (and/or --set key=value)")
    run_rlvr(load_config(RLVRConfig, args.config, args.overrides))
    return 0
