"""Model-state memory per GPU: the dry run's memory model against DeepSpeed's own estimator.

    python benchmarks/memory_model.py [--check-params]

For every recipe model (Llama-3.1-8B, Llama-3.1-70B, OLMo-2-1124-7B, OLMo-2-1124-13B) at the
learner process counts proposed for its RLVR stage, prints the bytes per GPU of the *model states*
-- weights + gradients + optimizer states, no activations, logits, reference or engines -- as the
memory model computes them (`training_memory`, the weights/gradients/optimizer terms) and as
DeepSpeed's estimators do for the same parameter count and GPU count
(`deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs` and
`deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`, both without CPU
offload; they are plain arithmetic and run on a CPU-only machine). Each launch is shown for ZeRO-3
and ZeRO-2; a PPO launch also for the policy + value model, which the RLVR learner trains as one
module (ActorCritic) under one DeepSpeed engine, so DeepSpeed sees their summed parameters.
`--check-params` also builds each model on the meta device with transformers and checks that the
parameter count and the largest layer used here are the real ones.

Why the two differ (P = parameters of the engine's module, N = processes = GPUs, LL = parameters of
the largest single module, for these models the embedding or LM head, vocab x hidden):

    memory model, ZeRO-3:  P * (2 + 2 + 12) / N          bf16 weights + bf16 grads + fp32 master/m/v
    DeepSpeed,    ZeRO-3:  P * 18 / N  +  4 * LL          18 bytes a parameter; the 16-bit parameter
                                                          and gradient of the largest layer gathered
                                                          whole on every GPU (not divided by N)
    memory model, ZeRO-2:  P * 2  +  P * (2 + 12) / N
    DeepSpeed,    ZeRO-2:  P * 2  +  P * 18 / N           18 = 16-bit grads 2 + fp32 grads 4 + fp32
                                                          params 4 + Adam m and v 8

So DeepSpeed charges 2 (ZeRO-3) or 4 (ZeRO-2) more bytes a parameter per process, for the fp32 copy
of the gradient partition that the optimizer step makes (DeepSpeed 0.19: `flat_grad_partition.to(fp32)`
in stage_1_and_2.py, the whole partition, 4 bytes; `_prepare_fp32_grad_for_sub_group` in stage3.py, one
sub-group of at most `sub_group_size` = 1e9 parameters at a time, so ZeRO-3's "18" is a round figure
for 16 + that transient), and under ZeRO-3 the largest layer's 16-bit parameter and gradient gathered
whole on every GPU. The memory model counts neither. The fp32 gradient lives only during the optimizer
step, when activations and logits are already freed, so it raises the step's peak, not the backward's;
the gathered layer is there in forward and backward too (one layer at a time, plus DeepSpeed's prefetch
and reduce buckets, which neither estimate counts) and, not being divided by N, weighs more the more
processes share the rest. The column "memory model + fp32 grad (+ largest layer)" adds exactly these
terms to the memory model and reproduces DeepSpeed's figure (the residual is DeepSpeed's int()
rounding); "agreement" is memory model / DeepSpeed.

Agreement at the proposed launches (printed by the script; DeepSpeed 0.19.8): ZeRO-3 75.7-84.5%
(16/18 = 88.9% on the per-parameter part, lower the more the fixed largest-layer buffer weighs: 75.7%
for Llama-3.1-8B over 12 processes, 84.5% for OLMo 2 7B + its value model over 8); ZeRO-2 86.7-95.9%
(the 16-bit weights on every GPU, counted alike by both, dominate as N grows: 95.9% for 70B over 40).
After adding the two terms above, the residual is 0-1 byte (DeepSpeed's int() rounding) in every row.

Benchmarks print a table; nothing is timed or asserted. `run()` returns the rows for
benchmarks/run_all.py (baseline = DeepSpeed's estimate, ratio = memory model / DeepSpeed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The memory model. It moves to open_instruct.recipe.memory: then only this import line changes.
from open_instruct.recipe.memory import GB, KNOWN_ARCHS, Arch, count_params, training_memory  # noqa: E402


@dataclass(frozen=True)
class Launch:
    recipe: str
    model: str  # a KNOWN_ARCHS name
    value: str | None  # the PPO value model's architecture (scalar head), None for GRPO
    processes: int  # learner processes = GPUs sharing the ZeRO partition
    nodes: int
    source: str


# The RLVR learner sizes proposed in the sizing report (each published launch, or the smallest
# memory-model fit where the toolkit's batch arithmetic cannot take the published count).
LAUNCHES = [
    Launch("tulu3_8b", "Llama-3.1-8B", "Llama-3.1-8B", 7, 1, "docs/tulu3.md: --actor_num_gpus_per_node 7"),
    Launch(
        "tulu3_1_8b_grpo",
        "Llama-3.1-8B",
        None,
        6,
        1,
        "docs/tulu3.md single-node: --actor_num_gpus_per_node 6",
    ),
    Launch(
        "tulu3_1_8b_grpo", "Llama-3.1-8B", None, 12, 2, "docs/tulu3.md 2 nodes: --actor_num_gpus_per_node 4 8"
    ),
    Launch(
        "tulu3_70b",
        "Llama-3.1-70B",
        "Llama-3.1-8B",
        40,
        5,
        "docs/tulu3.md: --actor_num_gpus_per_node 8 8 8 8 8",
    ),
    Launch(
        "olmo2_7b", "OLMo-2-1124-7B", "OLMo-2-1124-7B", 8, 2, "memory model (sweep: 31, does not divide 512)"
    ),
    Launch(
        "olmo2_13b",
        "OLMo-2-1124-13B",
        "OLMo-2-1124-7B",
        16,
        4,
        "memory model (sweep: 31, does not divide 512)",
    ),
]


def arch(name: str) -> Arch:
    return KNOWN_ARCHS[name][0]


def largest_module_params(a: Arch) -> int:
    """Parameters of the largest single module (DeepSpeed's `largest_layer_params`: a module's own
    parameters, not its children's): embedding / LM head (V x h), a projection (h x f, h x h)."""
    return max(a.vocab * a.hidden, a.hidden * a.ffn, a.hidden * a.hidden)


def model_states(parts: list[tuple[Arch, bool]], processes: int, zero: int) -> float:
    """Weights + gradients + optimizer of the memory model, summed over the engine's parts
    (arch, has LM head); micro-batch and sequence do not enter these three terms."""
    total = 0.0
    for a, lm_head in parts:
        m = training_memory(
            a,
            params=count_params(a, lm_head=lm_head),
            processes=processes,
            zero_stage=zero,
            micro_batch=1,
            seq_len=1,
            gradient_checkpointing=True,
            logits=False,
        )
        total += m["weights"] + m["gradients"] + m["optimizer"]
    return total


def deepspeed_states(params: int, largest: int, processes: int, nodes: int, zero: int) -> float:
    """DeepSpeed's per-GPU estimate for the same parameters and GPUs, without offload."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    per_node = processes // nodes
    if zero == 3:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            params,
            largest,
            num_gpus_per_node=per_node,
            num_nodes=nodes,
            cpu_offload=False,
            cpu_offload_params=False,
            zero_init=True,
        )
    else:
        _, gpu = estimate_zero2_model_states_mem_needs(
            params, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=False
        )
    return float(gpu)


def explained_difference(params: int, largest: int, processes: int, zero: int) -> float:
    """What DeepSpeed counts and the memory model does not (see the module docstring)."""
    if zero == 3:
        return 2 * params / processes + 4 * largest
    return 4 * params / processes


def compare() -> list[dict]:
    rows = []
    for ln in LAUNCHES:
        policy = arch(ln.model)
        variants = [([(policy, True)], ln.model)]
        if ln.value:
            variants.append(([(policy, True), (arch(ln.value), False)], f"{ln.model} + {ln.value} value"))
        for parts, label in variants:
            params = sum(count_params(a, lm_head=h) for a, h in parts)
            largest = max(largest_module_params(a) for a, _ in parts)
            for zero in (3, 2):
                ours = model_states(parts, ln.processes, zero)
                ds = deepspeed_states(params, largest, ln.processes, ln.nodes, zero)
                extra = explained_difference(params, largest, ln.processes, zero)
                rows.append(
                    {
                        "recipe": ln.recipe,
                        "model": label,
                        "params": params,
                        "largest": largest,
                        "zero": zero,
                        "processes": ln.processes,
                        "nodes": ln.nodes,
                        "source": ln.source,
                        "ours": ours,
                        "deepspeed": ds,
                        "explained": ours + extra,
                        "residual": ds - (ours + extra),
                        "agreement": ours / ds,
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "| recipe | model(s) | params | ZeRO | processes (nodes x per node) | memory model | DeepSpeed "
        "| agreement | memory model + fp32 grad (+ largest layer) | residual |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['recipe']} | {r['model']} | {r['params'] / 1e9:.2f}B | {r['zero']} "
            f"| {r['processes']} ({r['nodes']} x {r['processes'] // r['nodes']}) | {r['ours'] / GB:.2f} GB "
            f"| {r['deepspeed'] / GB:.2f} GB | {100 * r['agreement']:.1f}% | {r['explained'] / GB:.2f} GB "
            f"| {int(round(r['residual']))} B |"
        )
    for zero in (3, 2):
        agree = [r["agreement"] for r in rows if r["zero"] == zero]
        print(
            f"\nZeRO-{zero}: memory model / DeepSpeed = {100 * min(agree):.1f}% .. {100 * max(agree):.1f}% "
            f"over {len(agree)} rows"
        )
    print(
        "Largest layer (DeepSpeed's largest_layer_params): "
        + ", ".join(f"{name} {largest_module_params(arch(name)) / 1e6:.0f}M" for name in KNOWN_ARCHS)
    )


def check_params() -> None:
    """Builds each model (and its value model) on the meta device and compares the parameter count
    and largest layer with the ones used above. Needs transformers; allocates nothing."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        LlamaConfig,
        Olmo2Config,
    )

    print("\n| model | params (meta model) | count_params | largest layer (meta) | used here | value model |")
    print("|---|---|---|---|---|---|")
    for name, (a, _) in KNOWN_ARCHS.items():
        kw = dict(
            hidden_size=a.hidden,
            num_hidden_layers=a.layers,
            num_attention_heads=a.heads,
            num_key_value_heads=a.kv_heads,
            intermediate_size=a.ffn,
            vocab_size=a.vocab,
            tie_word_embeddings=a.tied_embeddings,
        )
        cfg = Olmo2Config(**kw) if a.qk_norm else LlamaConfig(**kw)
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(cfg)
            cfg.num_labels = 1
            value = AutoModelForSequenceClassification.from_config(cfg)
        n = sum(p.numel() for p in lm.parameters())
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in lm.modules())
        nv = sum(p.numel() for p in value.parameters())
        ok = (
            n == count_params(a)
            and largest == largest_module_params(a)
            and nv == count_params(a, lm_head=False)
        )
        print(
            f"| {name} | {n:,} | {count_params(a):,} | {largest:,} | {largest_module_params(a):,} "
            f"| {nv:,} vs {count_params(a, lm_head=False):,} {'(all match)' if ok else '(MISMATCH)'} |"
        )


def run() -> list[dict]:
    """Rows for benchmarks/run_all.py: baseline = DeepSpeed's estimate, ratio = ours / DeepSpeed."""
    return [
        {
            "stage": "memory model",
            "metric": f"{r['recipe']}: {r['model']}, ZeRO-{r['zero']} x {r['processes']}, model states per GPU "
            f"(baseline: DeepSpeed estimator)",
            "value": r["ours"] / GB,
            "unit": "GB",
            "baseline": r["deepspeed"] / GB,
            "ratio": r["agreement"],
        }
        for r in compare()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-params", action="store_true", help="cross-check counts on meta-device models")
    args = ap.parse_args(argv)
    print_table(compare())
    if args.check_params:
        check_params()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
