"""The RLVR stage's config. Field names follow open-instruct's RLVR scripts; plain dataclass, no heavy
imports (see train/config.py)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from ..generation.config import RolloutConfig, rollout_config
from ..train.config import TrainConfig


@dataclass
class RLVRConfig(TrainConfig):
    """Field names follow open-instruct's RLVR scripts; defaults are Tülu 3 8B RLVR (PPO) from
    REFERENCE.md section 1 unless noted. Inherited: model, optimizer, checkpoint and tracking fields.
    `per_device_train_batch_size` is the number of sequences per learner micro-batch."""

    algorithm: Literal["ppo", "grpo"] = (
        "ppo"  # ppo: value model + GAE (Tülu 3); grpo: group-normalised advantages (Tülu 3.1)
    )
    learning_rate: float = 3e-7  # Tülu 3 8B RLVR
    warmup_ratio: float = 0.0  # fraction of optimizer steps with a linear warmup
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    seed: int = 3  # prompt order, sampling seeds, initialisation (Tülu 3 8B RLVR: 3)
    # prompts and generation
    max_prompt_length: int = 2048  # prompts longer than this (tokens) are dropped and counted
    response_length: int = 2048  # max generated tokens per response
    temperature: float = 1.0  # sampling temperature; the learner scores logits / temperature too
    top_p: float = 1.0  # nucleus sampling
    num_unique_prompts_rollout: int = 64  # prompts per RL step
    num_samples_per_prompt_rollout: int = 1  # GRPO: the group size (Tülu 3.1: 16)
    total_episodes: int | None = None  # episodes = prompts x samples; steps = total / per step
    stop_strings: list[str] = field(
        default_factory=list
    )  # extra strings that end a response (EOS always does)
    # optimisation
    num_epochs: int = 4  # PPO epochs over each batch
    num_mini_batches: int = 1  # optimizer steps per epoch over each rollout batch
    cliprange: float = 0.2  # PPO/GRPO ratio clip
    beta: float = 0.05  # KL coefficient
    kl_estimator: Literal["k1", "k2", "k3"] | None = (
        None  # default: k1 (ppo, in the reward), k3 (grpo, in the loss)
    )
    # PPO
    value_model_name_or_path: str | None = None  # default: start from the policy with a zero head
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    cliprange_value: float = 0.2  # value-loss clip
    vf_coef: float = 0.1  # value-loss weight
    whiten_advantages: bool = True  # PPO: normalise advantages over the batch
    # GRPO
    grpo_normalize_std: bool = True  # GRPO: divide by the group std (Dr. GRPO: false)
    # rewards
    verification_reward: float = 10.0  # reward = verifier score x this (Tülu 3: 10)
    non_stop_penalty: bool = True  # a response cut by the length limit gets penalty_reward_value instead
    penalty_reward_value: float = -10.0  # the non-EOS penalty (Tülu 3: -10)
    reward_modules: list[str] = field(default_factory=list)  # user rewards: "my_rewards.py:fn"
    reward_timeout_s: float = 10.0  # per-sample verifier time limit; past it the sample scores 0 (counted)
    reward_workers: int = 1  # processes running the verifiers that could hang (math, code, user rewards)
    # engines (RolloutConfig fields, model filled in from model_name_or_path)
    rollout: dict = field(
        default_factory=dict
    )  # vLLM engine options: num_engines, device, tensor_parallel_size, resources, ... (docs/rollouts.md)
    async_mode: bool = False  # one-step off-policy: generate batch t+1 while training on t
    preflight_max_kl: float = (
        0.01  # refuse to start when vLLM and the learner disagree by more (mean per-token KL)
    )
    preflight_prompts: int = 8  # prompts sampled for that check
    # held-out evaluation
    eval_dataset_mix: str | None = (
        None  # held-out RLVR prompts: mean verifiable reward before/after -> eval.json
    )
    eval_every: int = 0  # RL steps; 0: only before and after training
    eval_limit: int | None = None  # first N held-out prompts only
    eval_temperature: float = 0.0  # 0: greedy held-out answers

    def validate(self, where: str) -> None:
        self.dataset_mix = self.dataset_mix or ""
        super().validate(where)
        if self.use_lora:  # the weight sync sends vLLM full weights; an adapter's names match none
            raise ConfigError(
                f"{where}.use_lora: RLVR trains full weights; it can start from a LoRA stage (its adapter is "
                f"merged in), but not train one: remove use_lora"
            )
        for name in (
            "num_unique_prompts_rollout",
            "num_samples_per_prompt_rollout",
            "num_epochs",
            "num_mini_batches",
            "response_length",
            "max_prompt_length",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.total_episodes is not None and self.total_episodes < 1:
            raise ConfigError(f"{where}.total_episodes: must be >= 1, got {self.total_episodes}")
        if not self.temperature > 0:
            # the learner divides its logits by the sampling temperature; greedy rollouts have no spread
            raise ConfigError(f"{where}.temperature: must be > 0 for RL sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}.top_p: must be in (0, 1], got {self.top_p}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"{where}.eval_limit: must be >= 1 or null, got {self.eval_limit}")
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

    def rollout_config(self) -> RolloutConfig:
        learner_gpus = 0
        if self.rollout.get("device", "cpu") == "cuda":
            import torch

            if torch.cuda.is_available():
                # the learner's processes on this node hold GPUs 0..n-1; the engines get the others
                learner_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return rollout_config(
            self.model_name_or_path,
            seed=self.seed,
            max_model_len=self.max_prompt_length + self.response_length,
            learner_dtype=self.dtype,
            options=self.rollout,
            learner_gpus=learner_gpus,
        )

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
