"""RLVR throughput: this toolkit's GRPO stage (vLLM engine in a Ray actor, weight sync every step) vs
TRL's GRPOTrainer (HF generate, and its vLLM colocate mode where it runs), same model, prompts,
reward, batch shape and loss, on CPU.

    python benchmarks/rlvr.py [--steps 8] [--prompts 16] [--samples 8] [--response-length 64]

Both train a random few-million-parameter Llama (built offline: hidden 256, 4 layers, FFN 1024) with
GRPO (beta 0, one optimizer step per batch of `prompts` x `samples` completions, temperature 1) on the
toy addition prompts, rewarded by this toolkit's gsm8k verifier (TRL gets it as a reward function).
A random model rarely emits EOS, so nearly every completion runs to `response_length`: both sides
generate the same number of tokens. Each trainer runs in its own subprocess. Reported, over the steps
after `WARMUP` (wall clock between step ends: generation, reward, training and -- ours -- weight sync):
- episodes/s: completions trained on per second;
- generated tokens/s: completion tokens per second of that wall clock (the end-to-end rate);
- ours also: the engine's own generation tokens/s (generation time only), for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from _common import print_table, report, run_child  # noqa: E402

WARMUP = 2
LR = 1e-5


def _prompts(n: int) -> list[dict]:
    lines = (REPO / "data_mixes/samples/rlvr_train.jsonl").read_text().splitlines()[:n]
    return [json.loads(x) for x in lines]


def _ours(model_dir: str, a: argparse.Namespace, out: str) -> dict:
    os.environ["OPEN_INSTRUCT_NO_PROGRESS"] = "1"
    from open_instruct.config import from_dict
    from open_instruct.rl import learner, rlvr

    data = Path(out).parent / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _prompts(a.prompts * a.steps)))
    marks: list[float] = []
    real_sync = learner.Learner.sync

    def timed_sync(self, group):  # called once at the end of every step, after the optimizer step
        res = real_sync(self, group)
        marks.append(time.perf_counter())
        return res

    learner.Learner.sync = timed_sync
    cfg = from_dict(
        rlvr.RLVRConfig,
        dict(
            model_name_or_path=model_dir,
            dataset_mix=str(data),
            output_dir=out,
            algorithm="grpo",
            num_unique_prompts_rollout=a.prompts,
            num_samples_per_prompt_rollout=a.samples,
            max_train_steps=a.steps,
            num_epochs=1,
            num_mini_batches=1,
            per_device_train_batch_size=a.micro_batch,
            response_length=a.response_length,
            max_prompt_length=64,
            learning_rate=LR,
            lr_scheduler_type="constant",
            beta=0.0,
            temperature=1.0,
            verification_reward=1.0,
            non_stop_penalty=False,
            dtype="float32",
            seed=0,
            logging_steps=1,
            checkpointing_steps=0,
            rollout={"multiprocess_engine": a.multiprocess_engine, "kv_cache_gib": 0.5},
        ),
    )
    rlvr.run_rlvr(cfg)
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r][WARMUP:]
    return {
        "marks": marks[-a.steps :],
        "response_length": sum(r["response_length"] for r in steps) / len(steps),
        "engine_tokens_per_s": sum(r["gen_tokens_per_s"] for r in steps) / len(steps),
    }


def _trl(model_dir: str, a: argparse.Namespace, out: str, use_vllm: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reward_fns import RewardRunner

    runner = RewardRunner()
    lengths: list[float] = []

    def verifiable_reward(completions, ground_truth, dataset, completion_ids=None, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if completion_ids is not None:
            lengths.append(sum(len(x) for x in completion_ids) / len(completion_ids))
        return runner.score(texts, ground_truth, dataset).scores

    rows = _prompts(a.prompts * a.steps)
    ds = Dataset.from_list(
        [{"prompt": r["messages"], "ground_truth": r["ground_truth"], "dataset": r["dataset"]} for r in rows]
    )
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    batch = a.prompts * a.samples
    extra = {}
    if use_vllm:
        # colocate: an in-process vLLM engine (the CPU build), weights loaded into it every step
        extra = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3)
    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=batch,  # one optimizer step per generation batch, as ours
        gradient_accumulation_steps=1,
        num_generations=a.samples,
        max_completion_length=a.response_length,
        temperature=1.0,
        beta=0.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        num_train_epochs=1,
        max_steps=a.steps,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        dataloader_num_workers=0,
        **extra,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"),
        reward_funcs=verifiable_reward,
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[Clock()],
    )
    trainer.train()
    trainer.save_model(out)  # ours publishes its final model too
    runner.close()
    return {"marks": marks, "response_length": sum(lengths[WARMUP:]) / max(len(lengths[WARMUP:]), 1)}


def _child(which: str, model_dir: str, a: argparse.Namespace) -> None:
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        if which == "ours":
            res = _ours(model_dir, a, out)
        else:
            res = _trl(model_dir, a, out, use_vllm=which == "trl_vllm")
    marks = res.pop("marks")
    seconds = marks[-1] - marks[WARMUP - 1]
    steps = len(marks) - WARMUP
    episodes = steps * a.prompts * a.samples
    res.update(
        steps=len(marks),
        seconds_per_step=seconds / steps,
        episodes_per_s=episodes / seconds,
        gen_tokens_per_s=episodes * res["response_length"] / seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    report(res)


def measure(which: str, model_dir: str, a: argparse.Namespace) -> dict:
    args = ["--child", which, "--model", model_dir, *_forward(a)]
    return run_child(__file__, args, which, env={"VLLM_CPU_KVCACHE_SPACE": "1"})


def _forward(a: argparse.Namespace) -> list[str]:
    return [
        "--steps",
        str(a.steps),
        "--prompts",
        str(a.prompts),
        "--samples",
        str(a.samples),
        "--response-length",
        str(a.response_length),
        "--micro-batch",
        str(a.micro_batch),
        *(["--multiprocess-engine"] if a.multiprocess_engine else []),
    ]


def _one_line(e: Exception) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    errors = [x for x in lines if "Error" in x or "error" in x]
    return (errors or lines or ["?"])[-1].strip()[:200]


def run(
    steps: int = 8,
    prompts: int = 16,
    samples: int = 8,
    response_length: int = 64,
    micro_batch: int = 32,
    multiprocess_engine: bool = False,
    hidden: int = 256,
    layers: int = 4,
) -> list[dict]:
    """Rows (stage, metric, value, unit, baseline, ratio, target) for benchmarks/run_all.py: ours vs TRL
    GRPOTrainer with HF generate (the target's baseline), then vs TRL's vLLM colocate mode when it runs
    here (a row saying why when it does not)."""
    from open_instruct.model.tiny import build_tiny

    a = argparse.Namespace(
        steps=steps,
        prompts=prompts,
        samples=samples,
        response_length=response_length,
        micro_batch=micro_batch,
        multiprocess_engine=multiprocess_engine,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            build_tiny(Path(tmp) / "model", hidden=hidden, layers=layers, heads=4, kv_heads=2, ffn=4 * hidden)
        )
        ours = measure("ours", model_dir, a)
        trl = measure("trl", model_dir, a)
        try:
            trl_vllm, vllm_error = measure("trl_vllm", model_dir, a), None
        except RuntimeError as e:
            trl_vllm, vllm_error = None, _one_line(e)

    shape = f"{prompts}x{samples}, {response_length} tok"
    rows = []
    for key, metric, unit, target in (
        ("episodes_per_s", f"episodes/s ({shape})", "ep/s", ">= 3x TRL GRPOTrainer"),
        ("gen_tokens_per_s", "generated tokens/s (end to end)", "tok/s", "-"),
    ):
        rows.append(
            {
                "stage": "rlvr",
                "metric": metric + " vs TRL (HF generate)",
                "value": ours[key],
                "unit": unit,
                "baseline": trl[key],
                "ratio": ours[key] / trl[key],
                "target": target,
                **({"ok": ours[key] >= 3 * trl[key]} if key == "episodes_per_s" else {}),
            }
        )
        if trl_vllm is not None:
            rows.append(
                {
                    "stage": "rlvr",
                    "metric": metric + " vs TRL (vLLM colocate)",
                    "value": ours[key],
                    "unit": unit,
                    "baseline": trl_vllm[key],
                    "ratio": ours[key] / trl_vllm[key],
                    "target": "-",
                }
            )
    if trl_vllm is None:
        rows.append(
            {
                "stage": "rlvr",
                "metric": f"TRL vLLM colocate mode: does not run here ({vllm_error})",
                "value": ours["episodes_per_s"],
                "unit": "ep/s",
                "baseline": None,
                "ratio": None,
                "target": "-",
            }
        )
    rows.append(
        {
            "stage": "rlvr",
            "metric": "engine generation tokens/s (generation time only)",
            "value": ours["engine_tokens_per_s"],
            "unit": "tok/s",
            "baseline": None,
            "ratio": None,
            "target": "-",
        }
    )
    rows.append(
        {
            "stage": "rlvr",
            "metric": "mean response length (same work per episode)",
            "value": ours["response_length"],
            "unit": "tok",
            "baseline": trl["response_length"],
            "ratio": ours["response_length"] / trl["response_length"],
            "target": "~1",
        }
    )
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=["ours", "trl", "trl_vllm"])
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--response-length", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--multiprocess-engine", action="store_true", help="vLLM engine core in its own process")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.model, a)
    else:
        print_table(
            run(
                a.steps,
                a.prompts,
                a.samples,
                a.response_length,
                a.micro_batch,
                a.multiprocess_engine,
                a.hidden,
                a.layers,
            )
        )
