"""The dry-run plan: how much data, how many steps, how the batch splits, and how much GPU memory
each process needs -- computed from the recipe alone, without downloading anything.

Memory estimate (`estimate_memory`), per process, in bytes; P = parameters, w = bytes per weight
(2 for bf16), N = processes sharing the ZeRO partition, b = sequences per micro-batch, s = tokens
per sequence, L/h/kv/f/V = layers, hidden, key-value width (kv_heads x head_dim), FFN width, vocab:

    weights     P * w                        (ZeRO-3: / N)
    gradients   P * w                        (ZeRO-2 and 3: / N)
    optimizer   DeepSpeed (ZeRO 1/2/3): P * (4 + 4 + 4) / N  -- fp32 master copy + AdamW m and v
                no DeepSpeed (ZeRO 0):  P * 2 * w            -- AdamW m and v in the weights' dtype
                                                                (the engine trains the loaded weights)
    activations per layer and token, with flash/SDPA attention (no s^2 term):
                    a = 8h + w * (6h + 3kv + 4f)
                (2 RMSNorms each keep an fp32 copy 4h and their output w*h; attention keeps q, k, v,
                 rotated q/k and its output ~ w*(4h + 3kv); the SwiGLU MLP keeps gate, up, act(gate)
                 and their product 4f*w)
                without gradient checkpointing:  L * b * s * a
                with it:                         L * b * s * h * w  (each layer's input)  +  b * s * a
                                                 (one layer recomputed at a time)
    logits      b * s * V * (w + 4 + 4)      (the logits, an fp32 copy for log-softmax, its fp32 grad;
                                              RLVR's entropy metric is computed without autograd)
    ZeRO buffers, once per process (not divided by N):
                ZeRO-3: 2 * LL * w + B * w   (the largest module -- the embedding, LL = V * h -- gathered
                                              whole with its gradient, and the reduce bucket B)
                ZeRO-1/2: 3 * B * w          (two overlapping reduce buffers and the all-gather bucket)
                B = 5e8 elements, the shipped zero2/zero3 configs' bucket sizes

LoRA (`use_lora`): the base is frozen, so gradients and AdamW states exist for the adapter only,
T = r * (in + out) summed over the targeted linear layers of every layer (all-linear: q, k, v, o,
gate, up, down -> r * (9h + 2kv + 3f) per layer). Adapter bytes t: 4 without DeepSpeed (PEFT keeps
adapters in fp32 under bf16 weights), w under it (DeepSpeed casts the module to bf16):
    weights     P * w + T * t                (QLoRA: the linear layers' weights at 4.127 bits -- NF4 plus
                                              double-quantised constants, the QLoRA paper's figure)
    gradients   T * t;  optimizer  T * 2 * t (no DeepSpeed) or T * 12 / N
    activations as full fine-tuning (the adapters need each targeted layer's input), plus with
                lora_dropout > 0 the dropped-out input of every targeted layer: w * sum(in) per token.

RLVR adds, on the learner: the frozen reference policy P * w when beta > 0 (/ N under any ZeRO stage:
it runs as a ZeRO-3 inference engine), and for PPO the value
model (its own weights, gradients, optimizer states and activations, head = h instead of V * h);
and on each vLLM engine (own GPU(s), tensor parallel t): P * w / t weights plus a KV cache of
2 * L * ceil(kv_heads / t) * head_dim * w bytes per token per GPU (KV heads are split over the GPUs,
replicated once t exceeds them) for the engine's share of the rollout batch at full length
(prompt + response). vLLM takes `gpu_memory_utilization` of each GPU and runs the batch in waves
when the whole batch's KV cache does not fit, at a cost in speed (the dry run says how many).

DeepSpeed's own estimator of ZeRO model states (`estimate_zero3_model_states_mem_needs`,
`estimate_zero2_model_states_mem_needs`) agrees with weights + gradients + optimizer + ZeRO buffers
here: benchmarks/memory_model.py prints the comparison for every recipe model (docs/cluster.md).

These are estimates (+-25% against measured peaks is typical): allocator fragmentation, CUDA
context (~0.5-1 GB), NCCL buffers and temporary buffers are not counted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

GB = 1e9  # decimal gigabytes, as GPU memory is usually quoted (an "80 GB" H100)


# ----------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied_embeddings: bool = False
    qk_norm: bool = False  # OLMo 2 normalises q and k (two extra norm vectors per layer)
    published_params: int | None = None  # the count the model card / safetensors index gives

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def count_params(a: Arch, lm_head: bool = True) -> int:
    """Parameters of a Llama/OLMo 2-style decoder: embeddings, per layer q/k/v/o + SwiGLU MLP + 2
    norms (+ q/k norms), a final norm, and an untied LM head (`lm_head=False`: a scalar value head
    of size h instead, as in a reward/value model)."""
    h, kv, f = a.hidden, a.kv_dim, a.ffn
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h + ((h + kv) if a.qk_norm else 0)
    embed = a.vocab * h
    head = (0 if a.tied_embeddings else a.vocab * h) if lm_head else h
    return embed + a.layers * per_layer + h + head


# Values from each model's config.json (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size); the parameter counts are the safetensors
# totals the model cards show, and tests check `count_params` reproduces them.
KNOWN_ARCHS: dict[str, tuple[Arch, tuple[str, ...]]] = {
    "Llama-3.1-8B": (
        Arch(
            "Llama-3.1-8B",
            hidden=4096,
            layers=32,
            heads=32,
            kv_heads=8,
            ffn=14336,
            vocab=128256,
            published_params=8_030_261_248,
        ),
        # Tülu 3 8B SFT/DPO/RM/final checkpoints are fine-tunes of it
        (r"llama-3\.1-8b", r"llama-3\.1-tulu-3(\.1)?-8b", r"meta-llama-3\.1-8b"),
    ),
    "Llama-3.1-70B": (
        Arch(
            "Llama-3.1-70B",
            hidden=8192,
            layers=80,
            heads=64,
            kv_heads=8,
            ffn=28672,
            vocab=128256,
            published_params=70_553_706_496,
        ),
        (r"llama-3\.1-70b", r"llama-3\.1-tulu-3(\.1)?-70b", r"meta-llama-3\.1-70b"),
    ),
    "OLMo-2-1124-7B": (
        Arch(
            "OLMo-2-1124-7B",
            hidden=4096,
            layers=32,
            heads=32,
            kv_heads=32,
            ffn=11008,
            vocab=100352,
            qk_norm=True,
            published_params=7_298_617_344,
        ),
        (r"olmo-2-1124-7b", r"olmo2-7b-1124"),
    ),
    "OLMo-2-1124-13B": (
        Arch(
            "OLMo-2-1124-13B",
            hidden=5120,
            layers=40,
            heads=40,
            kv_heads=40,
            ffn=13824,
            vocab=100352,
            qk_norm=True,
            published_params=13_716_198_400,
        ),
        (r"olmo-2-1124-13b", r"olmo-2-13b-1124"),
    ),
}


def arch_from_hf_config(cfg: dict, name: str) -> Arch:
    """An Arch from a Hugging Face config.json (Llama/OLMo 2/Mistral/Qwen-style keys)."""
    try:
        heads = cfg["num_attention_heads"]
        return Arch(
            name=name,
            hidden=cfg["hidden_size"],
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            ffn=cfg["intermediate_size"],
            vocab=cfg["vocab_size"],
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=cfg.get("model_type") == "olmo2",
        )
    except KeyError as e:
        raise ValueError(f"{name}: config.json lacks {e}") from None


def resolve_arch(name_or_path: str | None) -> Arch | None:
    """The architecture of a model named by a local dir (its config.json) or a hub id we know;
    None when unknown (the plan then says so rather than guessing)."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return arch_from_hf_config(json.loads((path / "config.json").read_text()), str(path))
    low = str(name_or_path).lower()
    for arch, patterns in KNOWN_ARCHS.values():
        if any(re.search(p, low) for p in patterns):
            return arch
    return None


def tiny_arch(spec: dict) -> Arch:
    """The architecture `build_tiny(**spec)` will create (the tiny tokenizer fills its vocab)."""
    return Arch(
        name=f"tiny-{spec.get('arch', 'llama')}",
        hidden=spec.get("hidden", 128),
        layers=spec.get("layers", 4),
        heads=spec.get("heads", 4),
        kv_heads=spec.get("kv_heads", 2),
        ffn=spec.get("ffn", 512),
        vocab=spec.get("vocab_size", 512),
        qk_norm=spec.get("arch", "llama") == "olmo2",
    )


# ----------------------------------------------------------------------------- memory


def zero_stage_of(deepspeed: str | None) -> tuple[int, bool]:
    """(ZeRO stage, optimizer offloaded to CPU) of a stage's `deepspeed` setting."""
    if not deepspeed:
        return 0, False
    if deepspeed in ("zero2", "zero3"):
        return int(deepspeed[-1]), False
    try:
        zo = json.loads(Path(deepspeed).read_text()).get("zero_optimization", {})
    except (OSError, json.JSONDecodeError):
        return 0, False
    offload = (zo.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    return int(zo.get("stage", 0)), offload


def linear_shapes(a: Arch) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer, by the module names PEFT targets."""
    h, kv, f = a.hidden, a.kv_dim, a.ffn
    return {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, f),
        "up_proj": (h, f),
        "down_proj": (f, h),
    }


@dataclass(frozen=True)
class LoraPlan:
    """What a LoRA stage trains: `trainable` adapter parameters on `targets` (module names)."""

    rank: int
    targets: tuple[str, ...]
    trainable: int
    dropout_inputs: int  # per layer: input features of the targeted layers (their dropout copies)
    unknown: tuple[str, ...] = ()  # targeted names this architecture model does not know (not counted)


def lora_plan(a: Arch, rank: int, targets: str | list[str], dropout: float = 0.0) -> LoraPlan:
    shapes = linear_shapes(a)
    names = list(shapes) if targets == "all-linear" else list(targets)
    known = tuple(n for n in names if n in shapes)
    trainable = a.layers * rank * sum(sum(shapes[n]) for n in known)
    inputs = sum(shapes[n][0] for n in known) if dropout > 0 else 0
    return LoraPlan(rank, known, trainable, inputs, tuple(n for n in names if n not in shapes))


NF4_BYTES = 4.127 / 8  # QLoRA: 4-bit NF4 weights + double-quantised block constants (0.127 bit/param)


def activation_bytes_per_token_layer(a: Arch, w: int) -> int:
    return 8 * a.hidden + w * (6 * a.hidden + 3 * a.kv_dim + 4 * a.ffn)


def training_memory(
    a: Arch,
    *,
    params: int,
    processes: int,
    zero_stage: int,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    w: int = 2,
    offload_optimizer: bool = False,
    logits: bool = True,
    lora: LoraPlan | None = None,
    base_4bit: bool = False,
) -> dict[str, float]:
    """Bytes per process of one trained model (see the module docstring for every formula); with
    `lora` only the adapter trains, `base_4bit` is QLoRA's quantised base."""
    n = max(1, processes)
    weights = float(params * w)
    if base_4bit:
        linear = a.layers * sum(i * o for i, o in linear_shapes(a).values())
        weights -= linear * (w - NF4_BYTES)
    # what trains, and in which dtype: every weight as loaded, or an adapter (PEFT upcasts it to fp32;
    # DeepSpeed casts the whole module to the training dtype again)
    trained, tw = (lora.trainable, 4 if zero_stage == 0 else w) if lora else (params, w)
    weights = (weights + (trained * tw if lora else 0)) / (n if zero_stage >= 3 else 1)
    grads = trained * tw / (n if zero_stage >= 2 else 1)
    if zero_stage == 0:
        optim = trained * 2 * tw
    else:
        optim = 0.0 if offload_optimizer else trained * 12 / n
    tokens = micro_batch * seq_len
    per_layer = activation_bytes_per_token_layer(a, w) + (w * lora.dropout_inputs if lora else 0)
    if gradient_checkpointing:
        acts = a.layers * tokens * a.hidden * w + tokens * per_layer
    else:
        acts = a.layers * tokens * per_layer
    out = {"weights": weights, "gradients": grads, "optimizer": optim, "activations": float(acts)}
    if logits:
        out["logits"] = float(tokens * a.vocab * (w + 8))
    return out


def kv_cache_bytes(a: Arch, tokens: int, w: int = 2, tensor_parallel: int = 1) -> float:
    """KV cache bytes per GPU of an engine over `tensor_parallel` GPUs."""
    heads = math.ceil(a.kv_heads / max(1, tensor_parallel))  # split over GPUs, replicated past kv_heads
    return float(2 * a.layers * heads * a.head_dim * w * tokens)


BUCKET = 5e8  # elements: reduce / all-gather / prefetch bucket of the shipped zero2.json and zero3.json


def zero_buffers(a: Arch, zero_stage: int, w: int) -> float:
    """Per-process ZeRO working memory that does not shrink with more processes (module docstring)."""
    if zero_stage >= 3:
        return float(2 * a.vocab * a.hidden * w + BUCKET * w)
    if zero_stage >= 1:
        return float(3 * BUCKET * w)
    return 0.0


@dataclass
class MemoryPlan:
    """Per-process GPU memory of one stage, in bytes, by component."""

    learner: dict[str, float]
    engine: dict[str, float] = field(default_factory=dict)  # each vLLM engine (RLVR only)
    notes: list[str] = field(default_factory=list)

    @property
    def learner_total(self) -> float:
        return sum(self.learner.values())

    @property
    def engine_total(self) -> float:
        return sum(self.engine.values())


def dtype_bytes(dtype: str) -> int:
    # `auto` is bf16 on GPUs (policy.resolve_dtype); the plan is for GPU runs
    return 4 if dtype == "float32" else 2


def _lora_of(cfg, arch: Arch, params: int, notes: list[str]) -> LoraPlan | None:
    if not getattr(cfg, "use_lora", False):  # RLVR trains full weights (its config refuses use_lora)
        return None
    plan = lora_plan(arch, cfg.lora_rank, cfg.lora_targets, cfg.lora_dropout)
    base = "a 4-bit NF4 base (QLoRA)" if cfg.load_in_4bit else "a frozen base"
    notes.append(
        f"LoRA rank {plan.rank} on {', '.join(plan.targets) or 'no known layer'}: {plan.trainable:,} "
        f"trainable parameters ({plan.trainable / params:.2%}) over {base}; gradients and AdamW states "
        f"for the adapter only"
    )
    if plan.unknown:
        notes.append(f"LoRA targets not in this estimate (unknown layer names): {', '.join(plan.unknown)}")
    return plan


def estimate_memory(
    stage_type: str, cfg, arch: Arch, processes: int, value_arch: Arch | None = None
) -> MemoryPlan:
    """The stage's memory per process for `cfg` (an SFT/DPO/RLVR config) on `arch`."""
    w = dtype_bytes(cfg.dtype)
    zero, offload = zero_stage_of(cfg.deepspeed)
    params = count_params(arch)
    notes = []
    lora = _lora_of(cfg, arch, params, notes)
    adapter = {"lora": lora, "base_4bit": bool(lora and cfg.load_in_4bit)}
    if stage_type == "sft":
        learner = training_memory(
            arch,
            params=params,
            processes=processes,
            zero_stage=zero,
            micro_batch=cfg.per_device_train_batch_size,
            seq_len=cfg.max_seq_length,
            gradient_checkpointing=cfg.gradient_checkpointing,
            w=w,
            offload_optimizer=offload,
            **adapter,
        )
        if zero:
            learner["ZeRO buffers"] = zero_buffers(arch, zero, w)
        return MemoryPlan(learner, notes=notes)
    if stage_type == "dpo":
        # chosen and rejected of each pair go through the model in one forward
        learner = training_memory(
            arch,
            params=params,
            processes=processes,
            zero_stage=zero,
            micro_batch=2 * cfg.per_device_train_batch_size,
            seq_len=cfg.max_seq_length,
            gradient_checkpointing=cfg.gradient_checkpointing,
            w=w,
            offload_optimizer=offload,
            **adapter,
        )
        if cfg.loss_type != "simpo" and cfg.reference == "live":
            learner["reference"] = params * w / (processes if zero >= 3 else 1)
        elif cfg.loss_type != "simpo":
            notes.append("reference log-probs are cached before training: no reference model in memory")
        if zero:
            learner["ZeRO buffers"] = zero_buffers(arch, zero, w)
        return MemoryPlan(learner, notes=notes)
    # rlvr: the learner processes (policy + reference + value, sharded alike); engines on their own GPUs
    seq = cfg.max_prompt_length + cfg.response_length
    learner = training_memory(
        arch,
        params=params,
        processes=processes,
        zero_stage=zero,
        micro_batch=cfg.per_device_train_batch_size,
        seq_len=seq,
        gradient_checkpointing=cfg.gradient_checkpointing,
        w=w,
        offload_optimizer=offload,
    )
    if cfg.beta > 0:  # sharded under any ZeRO stage (a ZeRO-3 inference engine)
        learner["reference"] = float(params * w) / (processes if zero >= 1 else 1)
    if cfg.algorithm == "ppo":
        va = value_arch or arch
        v = training_memory(
            va,
            params=count_params(va, lm_head=False),
            processes=processes,
            zero_stage=zero,
            micro_batch=cfg.per_device_train_batch_size,
            seq_len=seq,
            gradient_checkpointing=cfg.gradient_checkpointing,
            w=w,
            offload_optimizer=offload,
            logits=False,
        )
        learner["value model"] = sum(v.values())
    if zero:
        learner["ZeRO buffers"] = zero_buffers(arch, zero, w)
    rc = cfg.rollout_config()
    tp = max(1, rc.tensor_parallel_size)
    per_engine_seqs = math.ceil(cfg.rollout_batch / max(1, rc.num_engines))
    engine = {"weights": params * w / tp, "kv cache": kv_cache_bytes(arch, per_engine_seqs * seq, w, tp)}
    notes.append(
        f"each of {rc.num_engines} vLLM engine(s) (tensor parallel {tp}) holds "
        f"{per_engine_seqs} sequences x {seq} tokens at full length"
    )
    return MemoryPlan(learner, engine, notes)


def fmt_gb(nbytes: float) -> str:
    if nbytes >= 10 * GB:
        return f"{nbytes / GB:.0f} GB"
    if nbytes >= 0.1 * GB:
        return f"{nbytes / GB:.1f} GB"
    if nbytes >= 1e6:
        return f"{nbytes / 1e6:.0f} MB"
    return f"{nbytes / 1e3:.0f} kB"


def format_memory(mem: MemoryPlan, indent: str = "    ") -> list[str]:
    parts = " + ".join(f"{k} {fmt_gb(v)}" for k, v in mem.learner.items())
    lines = [f"{indent}per training process: {fmt_gb(mem.learner_total)} = {parts}"]
    if mem.engine:
        parts = " + ".join(f"{k} {fmt_gb(v)}" for k, v in mem.engine.items())
        lines.append(f"{indent}per vLLM engine GPU: {fmt_gb(mem.engine_total)} = {parts}")
    lines += [f"{indent}({n})" for n in mem.notes]
    return lines


def fmt_int(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"
