"""The configs of the trained stages: fields every stage shares (`TrainConfig`), SFT's and DPO's.
Plain dataclasses with no heavy imports, so `--help` and config errors are instant; the strict loading
(unknown keys, wrong types, cross-field checks in `validate`) is config.from_dict's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from ..generation.policy_pairs import PolicyPairsConfig

LOSS_TYPES = ("dpo", "dpo_norm", "simpo", "ipo")


@dataclass
class TrainConfig:
    """Fields every trained stage (SFT, DPO) shares. Names follow open-instruct/HF where they exist."""

    # model
    model_name_or_path: str = ""  # the starting model: a local HF model dir or a hub id (org/name)
    tokenizer_name_or_path: str | None = None  # null: the model's own tokenizer
    chat_template: str | None = (
        "auto"  # auto: the tokenizer's own, else tulu | tulu | olmo | null: the tokenizer's own (required)
    )
    add_bos: bool = False  # OLMo 2: BOS in front of the tulu/olmo template
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = (
        "auto"  # auto: bf16 on GPUs that support it, else fp32
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = (
        "sdpa"  # transformers attention kernel
    )
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    use_lora: bool = False  # train a LoRA adapter (PEFT), not all weights; the stage publishes the adapter
    lora_rank: int = 16  # LoRA rank r
    lora_alpha: int = 32  # LoRA alpha: the adapter's update is scaled by alpha / rank
    lora_dropout: float = 0.0  # dropout on the adapter's input
    lora_target_modules: str | list[str] = "all-linear"  # all-linear (not lm_head) or names [q_proj, v_proj]
    lora_save_merged: bool = False  # also publish merged full weights in <output_dir>/merged/
    load_in_4bit: bool = False  # QLoRA: a 4-bit NF4 base (bitsandbytes, CUDA only; needs use_lora)
    trust_remote_code: bool = False  # run a hub model's own Python code (off: refused)
    allow_pickle: bool = False  # load pickle (.bin) weights from a local dir (off: safetensors only)
    # data
    dataset_mix: str = ""  # a data-mix YAML or a single .jsonl/.json/.parquet file
    max_seq_length: int = (
        2048  # tokens per example; longer ones are truncated (rows left without a trained token are dropped)
    )
    packing: bool = False  # pack several examples per row (no padding; a block-diagonal attention mask)
    preprocessing_num_workers: int = 1  # processes for tokenisation (cached on disk by content)
    # optimisation
    per_device_train_batch_size: int = 1  # examples per micro-batch per process
    gradient_accumulation_steps: int | None = None  # derived from total_batch_size when null
    total_batch_size: int | None = None  # effective batch = per_device * accumulation * processes
    learning_rate: float = 2e-5  # peak learning rate (AdamW)
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    warmup_ratio: float = 0.03  # fraction of optimizer steps with a linear warmup
    weight_decay: float = 0.0  # AdamW weight decay (not on norms and biases)
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    adam_epsilon: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    num_train_epochs: float = 1.0  # passes over the data (fractions allowed); max_train_steps wins when set
    max_train_steps: int | None = (
        None  # when set, the run is exactly this many steps (epochs extend or stop early)
    )
    seed: int = 42  # data order and initialisation
    # distribution
    deepspeed: str | None = None  # zero2 | zero3 | path/to/ds_config.json
    dist_timeout_s: float = 1800.0  # seconds a collective waits for the other processes: a lost node fails the run, never hangs it
    # output, checkpoints, tracking
    output_dir: str = ""  # where the model, checkpoints, metrics.jsonl and plots go
    checkpointing_steps: int = 0  # 0: only the final model
    keep_last_checkpoints: int = 2  # older checkpoints are deleted (0: keep all)
    logging_steps: int = 1  # a metrics.jsonl row every N steps
    wandb_project: str | None = None  # log to wandb (online when logged in, else offline); also WANDB_PROJECT
    wandb_run_name: str | None = None  # the wandb run's display name
    # sharing (TRL's names): after the model is published and verified; `open-instruct push` retries
    push_to_hub: bool = False  # upload the published model (and a model card) to the Hugging Face Hub
    hub_model_id: str | None = None  # hub repo org/name, or name (your namespace); null: output_dir's name
    hub_private_repo: bool | None = None  # create the repo private; null: the hub's default for the namespace
    hub_revision: str | None = None  # the branch to push to (created from main when missing); null: main

    @property
    def generates_data(self) -> bool:
        """True when the stage makes its own training data (DPO `policy_pairs`)."""
        return False

    @property
    def lora_targets(self) -> str | list[str]:
        """PEFT's `target_modules`: "all-linear", or a list of module names ("q_proj,v_proj" is split)."""
        targets = self.lora_target_modules
        if isinstance(targets, str):
            return (
                targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
            )
        return list(targets)

    def validate_lora(self, where: str) -> None:
        if self.lora_rank < 1:
            raise ConfigError(f"{where}.lora_rank: must be >= 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"{where}.lora_alpha: must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"{where}.lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            raise ConfigError(
                f"{where}.lora_target_modules: empty; use all-linear or module names (q_proj, ...)"
            )
        for key in ("lora_save_merged", "load_in_4bit"):
            if getattr(self, key) and not self.use_lora:
                raise ConfigError(f"{where}.{key}: applies to LoRA training only; set use_lora: true")
        if self.load_in_4bit and self.deepspeed:
            raise ConfigError(f"{where}.load_in_4bit: QLoRA does not run under DeepSpeed; remove deepspeed")

    def check_machine(self, where: str) -> None:
        """What this machine must have to run the stage. Not part of `validate`: a dry run plans a
        QLoRA stage on a laptop for the GPU it will run on; a run checks it before anything heavy."""
        if self.use_lora and self.load_in_4bit:
            from ..model.lora import qlora_unavailable

            why = qlora_unavailable()
            if why:
                raise ConfigError(
                    f"{where}.load_in_4bit: QLoRA needs a CUDA GPU and bitsandbytes, but {why}; "
                    f"set load_in_4bit: false to train LoRA on the full-precision base"
                )

    def validate(self, where: str) -> None:
        if not self.model_name_or_path:
            raise ConfigError(f"{where}: missing required key 'model_name_or_path'")
        if not self.dataset_mix and not self.generates_data:
            raise ConfigError(f"{where}: missing required key 'dataset_mix'")
        if not self.output_dir:
            raise ConfigError(f"{where}: missing required key 'output_dir'")
        check_output_dir(self.output_dir, f"{where}.output_dir")
        for name in ("per_device_train_batch_size", "max_seq_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ConfigError(f"{where}.max_train_steps: must be >= 1 or null, got {self.max_train_steps}")
        if not self.num_train_epochs > 0:
            raise ConfigError(f"{where}.num_train_epochs: must be > 0, got {self.num_train_epochs}")
        if self.learning_rate <= 0:
            raise ConfigError(f"{where}.learning_rate: must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{where}.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.chat_template not in (None, "auto", "tulu", "olmo"):
            raise ConfigError(
                f"{where}.chat_template: {self.chat_template!r} is not one of auto, tulu, olmo, null"
            )
        if self.deepspeed and self.deepspeed not in ("zero2", "zero3") and not Path(self.deepspeed).is_file():
            raise ConfigError(
                f"{where}.deepspeed: {self.deepspeed!r} is neither zero2, zero3 nor an existing file"
            )
        self.accumulation_steps(world_size=1, where=where) if self.total_batch_size else None
        self.validate_lora(where)
        if self.hub_model_id is not None:
            from ..model.hub import check_repo_id

            check_repo_id(self.hub_model_id, f"{where}.hub_model_id")

    def accumulation_steps(self, world_size: int, where: str = "config") -> int:
        """Gradient accumulation steps so that the effective batch is `total_batch_size`."""
        if self.total_batch_size is None:
            return self.gradient_accumulation_steps or 1
        per_step = self.per_device_train_batch_size * world_size
        if self.total_batch_size % per_step:
            raise ConfigError(
                f"{where}.total_batch_size: {self.total_batch_size} is not divisible by "
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) x processes ({world_size})"
            )
        accum = self.total_batch_size // per_step
        if self.gradient_accumulation_steps not in (None, accum):
            raise ConfigError(
                f"{where}.gradient_accumulation_steps: {self.gradient_accumulation_steps} contradicts "
                f"total_batch_size {self.total_batch_size} = {self.per_device_train_batch_size} x "
                f"{world_size} processes x {accum}"
            )
        return accum


@dataclass
class SFTConfig(TrainConfig):
    # Tülu 3 summed the per-token loss: every token weighs the same, whatever its sequence length.
    loss_reduction: Literal["sum", "mean"] = (
        "sum"  # sum: every token weighs the same (Tülu 3); mean: per micro-batch
    )
    learning_rate: float = 5e-6


# Loss types that compare per-token *mean* log-probs (used for the held-out accuracy score too).
LENGTH_NORMALISED = ("dpo_norm", "simpo", "ipo")


@dataclass
class DPOConfig(TrainConfig):
    """DPO stage config. Defaults are the Tülu 3 8B DPO run (REFERENCE.md section 1: the
    Llama-3.1-Tulu-3-8B-DPO model card and open-instruct's docs/tulu3.md command); the source of
    each value is in its comment. Fields not listed here are TrainConfig's (engine.py)."""

    # --- loss
    loss_type: Literal["dpo", "dpo_norm", "simpo", "ipo"] = (
        "dpo_norm"  # Tülu 3 8B: length-normalised DPO (`--dpo_loss_type dpo_norm`)
    )
    beta: float = 5.0  # Tülu 3 8B model card: "KL penalty coefficient 5" (`--dpo_beta 5`)
    label_smoothing: float = 0.0  # conservative DPO eps (dpo, dpo_norm, simpo); Tülu 3 used none
    simpo_gamma: float = (
        0.5  # SimPO target reward margin, absolute (= gamma_beta_ratio x beta); TRL CPOConfig's default
    )
    nll_coef: float = 0.0  # RPO-style NLL on the chosen response (mean per-token NLL x coef); off in Tülu 3
    # --- batch layout
    share_prompt: bool = (
        True  # padded mode: one row per pair [prompt, chosen, rejected], the prompt computed once
    )
    # --- reference
    reference: Literal["cached", "live"] = (
        "cached"  # cached: one pass before training (open-instruct dpo_tune_cache)
    )
    ref_model_name_or_path: str | None = None  # null: the starting model is the reference (Tülu 3)
    reference_batch_size: int | None = (
        None  # pairs per forward in the reference/eval passes; null: per_device_train_batch_size
    )
    # --- held-out evaluation
    eval_dataset_mix: str | None = None  # held-out preference pairs -> eval.json (accuracy before/after)
    # --- on-policy pairs: the starting model's own right vs wrong answers to verifiable prompts
    # (data/policy_pairs.py); replaces dataset_mix / eval_dataset_mix when its prompts are set
    policy_pairs: PolicyPairsConfig = field(
        default_factory=PolicyPairsConfig
    )  # on-policy pairs: prompts, eval_prompts, samples, ... (docs/dpo.md)
    # --- optimisation (overrides of TrainConfig defaults)
    learning_rate: float = 5e-7  # Tülu 3 8B model card (70B/405B: 2e-7)
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"  # model card
    warmup_ratio: float = 0.1  # model card
    weight_decay: float = 0.0  # docs/tulu3.md command (`--weight_decay 0.0`)
    num_train_epochs: float = 1.0  # model card
    max_seq_length: int = 2048  # model card
    total_batch_size: int | None = 32  # model card, 8B (70B: 128, 405B: 256; the public 8B script used 128)
    # seed: TrainConfig's 42 -- no seed is published for the 8B DPO run

    @property
    def generates_data(self) -> bool:
        return self.policy_pairs.enabled

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.policy_pairs.enabled and self.dataset_mix:
            raise ConfigError(
                f"{where}.dataset_mix: policy_pairs.prompts makes the training pairs; remove one of the two"
            )
        if self.policy_pairs.eval_prompts and self.eval_dataset_mix:
            raise ConfigError(
                f"{where}.eval_dataset_mix: policy_pairs.eval_prompts makes the held-out pairs; remove one "
                f"of the two"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"{where}.loss_type: {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise ConfigError(f"{where}.beta: must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"{where}.label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ConfigError(f"{where}.label_smoothing: does not apply to loss_type ipo (set it to 0)")
        if self.nll_coef < 0:
            raise ConfigError(f"{where}.nll_coef: must be >= 0, got {self.nll_coef}")
        if self.loss_type == "simpo" and self.ref_model_name_or_path:
            raise ConfigError(f"{where}.ref_model_name_or_path: simpo uses no reference model; remove it")
        if self.reference_batch_size is not None and self.reference_batch_size < 1:
            raise ConfigError(f"{where}.reference_batch_size: must be >= 1, got {self.reference_batch_size}")
        if self.eval_dataset_mix == "":
            self.eval_dataset_mix = None


def check_output_dir(path: str, where: str) -> None:
    """An output dir must be (or become) a directory: neither it nor the first of its parents that
    exists may be a file (mkdir would fail there deep inside a run)."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                inside = "" if q == p else f" (a parent of {path})"
                raise ConfigError(f"{where}: {q} is a file{inside}; give a directory")
            return


def short_form(args) -> dict:
    """`--model/--data/--output` of a stage command as config keys (they win over --config's file)."""
    return {
        key: value
        for key, value in (
            ("model_name_or_path", getattr(args, "model", None)),
            ("dataset_mix", getattr(args, "data", None)),
            ("output_dir", getattr(args, "output", None)),
        )
        if value
    }
