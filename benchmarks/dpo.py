"""DPO throughput and memory: this toolkit's DPO stage vs TRL's DPOTrainer (precompute_ref_log_probs
on), same model, data, batch and loss, on CPU.

    python benchmarks/dpo.py [--steps 20] [--pairs-per-step 32] [--micro-batch 8] [--threads 1]

Both train the same few-million-parameter Llama (built offline: hidden 256, 4 layers, FFN 1024) with
sigmoid DPO (beta 0.1) on the first steps x pairs_per_step pairs of the toy preference data, one epoch,
`micro_batch` pairs per forward (chosen + rejected concatenated) and gradient accumulation up to
`pairs_per_step`. Each trainer runs in its own subprocess (fresh caches), so peak RSS
(`ru_maxrss`) is its own. Reported:
- reference pass pairs/s: the one no-grad pass over the data before training (ours: cached on disk
  after the first run, so a rerun skips it; measured here on a cold cache);
- train pairs/s: optimizer steps after `WARMUP`, wall clock between step ends (collation included);
- end-to-end pairs/s: pairs trained / (reference pass + the whole training loop);
- peak RSS of the process.
Threads: 1 per trainer by default. The machine's 2 cores are shared with other jobs; two torch
threads competing with another process for a core run up to 10x slower and very noisily.
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
BETA = 0.1
LR = 1e-4
MAX_LEN = 256


def _data(out_dir: Path, pairs: int) -> Path:
    lines = (REPO / "data_mixes/samples/preference_train.jsonl").read_text().splitlines()
    lines = (lines * (pairs // len(lines) + 1))[:pairs]
    path = out_dir / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ours(
    model_dir: str, data: Path, steps: int, pairs_per_step: int, micro: int, out: str, packing: bool
) -> dict:
    os.environ["OPEN_INSTRUCT_NO_PROGRESS"] = "1"
    from open_instruct.config import from_dict
    from open_instruct.train import dpo, ref_cache, stage

    clock: dict = {"steps": []}
    real_pass, real_loop = ref_cache.compute_pair_logps, stage.train_loop

    def timed_pass(*a, **k):
        t = time.perf_counter()
        res = real_pass(*a, **k)
        clock["ref_s"] = time.perf_counter() - t
        return res

    def timed_loop(*a, **k):
        clock["loop_start"] = time.perf_counter()
        res = real_loop(*a, **k)
        clock["loop_end"] = time.perf_counter()
        return res

    ref_cache.compute_pair_logps, stage.train_loop = timed_pass, timed_loop
    cfg = from_dict(
        dpo.DPOConfig,
        dict(
            model_name_or_path=model_dir,
            dataset_mix=str(data),
            output_dir=out,
            loss_type="dpo",
            beta=BETA,
            learning_rate=LR,
            warmup_ratio=0.0,
            per_device_train_batch_size=micro,
            total_batch_size=pairs_per_step,
            max_seq_length=MAX_LEN,
            dtype="float32",
            packing=packing,
            seed=0,
            logging_steps=1,
        ),
    )
    dpo.run_dpo(cfg, on_step=lambda step, m: clock["steps"].append(time.perf_counter()))
    marks = clock["steps"]
    return {
        "ref_s": clock["ref_s"],
        "loop_s": clock["loop_end"] - clock["loop_start"],
        "train_s": marks[-1] - marks[WARMUP - 1],
        "train_steps": len(marks) - WARMUP,
        "steps": len(marks),
    }


def _trl(
    model_dir: str, data: Path, steps: int, pairs_per_step: int, micro: int, out: str, packing: bool
) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(x) for x in data.read_text().splitlines()]
    # TRL's conversational preference form: shared prompt turns + one assistant turn per side.
    ds = Dataset.from_list(
        [
            {"prompt": r["chosen"][:-1], "chosen": r["chosen"][-1:], "rejected": r["rejected"][-1:]}
            for r in rows
        ]
    )
    clock: dict = {"steps": []}
    real_pre = DPOTrainer._precompute_ref_logps

    def timed_pre(self, *a, **k):
        t = time.perf_counter()
        res = real_pre(self, *a, **k)
        clock["ref_s"] = time.perf_counter() - t
        return res

    DPOTrainer._precompute_ref_logps = timed_pre

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock["steps"].append(time.perf_counter())

    args = DPOConfig(
        output_dir=out,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=pairs_per_step // micro,
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        max_length=MAX_LEN,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        dataloader_num_workers=0,
        padding_free=False,
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"),
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[Clock()],
    )
    t = time.perf_counter()
    trainer.train()
    loop_s = time.perf_counter() - t
    trainer.save_model(out)  # ours always publishes the final model: the same work here
    marks = clock["steps"]
    return {
        "ref_s": clock["ref_s"],
        "loop_s": loop_s,
        "train_s": marks[-1] - marks[WARMUP - 1],
        "train_steps": len(marks) - WARMUP,
        "steps": len(marks),
    }


def _child(
    which: str, model_dir: str, steps: int, pairs_per_step: int, micro: int, threads: int, packing: bool
) -> None:
    import resource

    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        data = _data(Path(out), steps * pairs_per_step)
        fn = _ours if which == "ours" else _trl
        res = fn(model_dir, data, steps, pairs_per_step, micro, str(Path(out) / "run"), packing)
    pairs = steps * pairs_per_step
    res.update(
        pairs=pairs,
        ref_pairs_per_s=pairs / res["ref_s"],
        train_pairs_per_s=res["train_steps"] * pairs_per_step / res["train_s"],
        e2e_pairs_per_s=pairs / (res["ref_s"] + res["loop_s"]),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    report(res)


def measure(
    which: str,
    model_dir: str,
    steps: int,
    pairs_per_step: int,
    micro: int,
    threads: int,
    packing: bool = False,
) -> dict:
    args = [
        "--child",
        which,
        "--model",
        model_dir,
        "--steps",
        str(steps),
        "--pairs-per-step",
        str(pairs_per_step),
        "--micro-batch",
        str(micro),
        "--threads",
        str(threads),
    ]
    return run_child(
        __file__,
        args + (["--packing"] if packing else []),
        which,
        env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
    )


def run(
    steps: int = 20,
    pairs_per_step: int = 32,
    micro: int = 8,
    threads: int = 1,
    hidden: int = 256,
    layers: int = 4,
    repeats: int = 1,
) -> list[dict]:
    """Rows (stage, metric, value, unit, baseline, ratio, target) for benchmarks/run_all.py. With
    repeats > 1 the trainers alternate; throughput keeps each trainer's best run (the one least
    disturbed by other jobs on the shared cores), peak RSS the median run."""
    from open_instruct.model.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            build_tiny(Path(tmp) / "model", hidden=hidden, layers=layers, heads=4, kv_heads=2, ffn=4 * hidden)
        )
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        for _ in range(repeats):
            for which in ("ours", "trl"):
                runs[which].append(measure(which, model_dir, steps, pairs_per_step, micro, threads))

    def best(which: str, key: str) -> float:
        vals = sorted(r[key] for r in runs[which])
        if key == "peak_rss_mb":  # memory does not suffer from other jobs' load: the median run
            return vals[len(vals) // 2]
        return vals[-1]  # throughput: the run least slowed down by other jobs on the shared cores

    rows = []
    for key, metric in (
        ("train_pairs_per_s", "train pairs/s"),
        ("ref_pairs_per_s", "reference pass pairs/s"),
        ("e2e_pairs_per_s", "end-to-end pairs/s (ref pass + training)"),
    ):
        ours, trl = best("ours", key), best("trl", key)
        rows.append(
            {
                "stage": "dpo",
                "metric": metric,
                "value": ours,
                "unit": "pairs/s",
                "baseline": trl,
                "ratio": ours / trl,
                "target": ">= 1.5x TRL DPOTrainer" if key == "train_pairs_per_s" else "-",
            }
        )
    ours, trl = best("ours", "peak_rss_mb"), best("trl", "peak_rss_mb")
    rows.append(
        {
            "stage": "dpo",
            "metric": "peak RSS",
            "value": ours,
            "unit": "MB",
            "baseline": trl,
            "ratio": ours / trl,
            "target": "<= 1x TRL",
        }
    )
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["ours", "trl"])
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pairs-per-step", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--packing", action="store_true", help="child only: ours with packing")
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.model, a.steps, a.pairs_per_step, a.micro_batch, a.threads, a.packing)
    else:
        print_table(run(a.steps, a.pairs_per_step, a.micro_batch, a.threads, a.hidden, a.layers, a.repeats))
