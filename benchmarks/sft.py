"""SFT throughput: this toolkit's SFT stage vs TRL's SFTTrainer, same model, data and batch, on CPU.

    python benchmarks/sft.py [--steps 30] [--hidden 256] [--layers 4]

Both train the same few-million-parameter Llama (built offline) on the toy SFT data with packing
on, ~the same number of tokens per optimizer step, 2 torch threads each, each in its own
subprocess. Throughput = non-padding tokens processed per second over the steps after warm-up.
TRL packs rows of `max_length` (BFD, padding-free with position ids); ours packs each step's
examples into rows of `max_seq_length`. Prints a markdown table and the ratio (target >= 1.5x).
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

ROW_TOKENS = 256  # packed row length for both trainers
WARMUP = 3


def _ours(model_dir: str, steps: int, rows_per_step: int, out: str) -> dict:
    os.environ["OPEN_INSTRUCT_NO_PROGRESS"] = "1"
    from open_instruct.config import from_dict
    from open_instruct.track import read_metrics
    from open_instruct.train.sft import SFTConfig, run_sft

    # examples per step chosen so a step holds about rows_per_step full rows of tokens
    examples = _examples_per_step(model_dir, rows_per_step)
    cfg = from_dict(
        SFTConfig,
        dict(
            model_name_or_path=model_dir,
            dataset_mix=str(REPO / "data_mixes/tiny_sft.yaml"),
            output_dir=out,
            per_device_train_batch_size=examples,
            max_train_steps=steps,
            packing=True,
            max_seq_length=ROW_TOKENS,
            learning_rate=1e-3,
            dtype="float32",
            warmup_ratio=0.0,
            seed=0,
        ),
    )
    run_sft(cfg)
    rows = read_metrics(Path(out) / "metrics.jsonl")[WARMUP:]
    assert rows, f"no metrics after warm-up in {out}: {(Path(out) / 'metrics.jsonl').read_text()[:300]}"
    tokens = sum(r["tokens_per_s"] * r["step_seconds"] for r in rows)
    seconds = sum(r["step_seconds"] for r in rows)
    return {"tokens_per_s": tokens / seconds, "tokens_per_step": tokens / len(rows), "steps": len(rows)}


def _examples_per_step(model_dir: str, rows_per_step: int) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lines = (REPO / "data_mixes/samples/sft_train.jsonl").read_text().splitlines()[:200]
    lengths = [
        len(tok.apply_chat_template(json.loads(x)["messages"], tokenize=True, return_dict=True)["input_ids"])
        for x in lines
    ]
    return max(1, int(rows_per_step * ROW_TOKENS / (sum(lengths) / len(lengths))))


def _trl(model_dir: str, steps: int, rows_per_step: int, out: str) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    data = load_dataset("json", data_files=str(REPO / "data_mixes/samples/sft_train.jsonl"), split="train")
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    cfg = SFTConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=rows_per_step,
        packing=True,
        max_length=ROW_TOKENS,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    (t0, n0), (t1, n1) = marks[WARMUP - 1], marks[-1]
    return {
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "tokens_per_step": (n1 - n0) / (len(marks) - WARMUP),
        "steps": len(marks) - WARMUP,
    }


def _child(which: str, model_dir: str, steps: int, rows_per_step: int) -> None:
    import resource

    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as out:
        res = (_ours if which == "ours" else _trl)(model_dir, steps, rows_per_step, out)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(res)


def measure(which: str, model_dir: str, steps: int, rows_per_step: int) -> dict:
    args = [
        "--child",
        which,
        "--model",
        model_dir,
        "--steps",
        str(steps),
        "--rows-per-step",
        str(rows_per_step),
    ]
    return run_child(__file__, args, which, env={"OMP_NUM_THREADS": "2"}, timeout=1800)


def run(steps: int = 30, hidden: int = 256, layers: int = 4, rows_per_step: int = 4) -> list[dict]:
    from open_instruct.model.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            build_tiny(Path(tmp) / "model", hidden=hidden, layers=layers, heads=4, kv_heads=2, ffn=4 * hidden)
        )
        ours = measure("ours", model_dir, steps, rows_per_step)
        trl = measure("trl", model_dir, steps, rows_per_step)
    ratio = ours["tokens_per_s"] / trl["tokens_per_s"]
    return [
        {
            "stage": "sft",
            "metric": "tokens/s (packing)",
            "value": ours["tokens_per_s"],
            "unit": "tok/s",
            "baseline": trl["tokens_per_s"],
            "ratio": ratio,
            "target": ">= 1.5x TRL SFTTrainer",
        },
        {
            "stage": "sft",
            "metric": "peak RSS",
            "value": ours["peak_rss_mb"],
            "unit": "MB",
            "baseline": trl["peak_rss_mb"],
            "ratio": ours["peak_rss_mb"] / trl["peak_rss_mb"],
            "target": "-",
        },
        {
            "stage": "sft",
            "metric": "tokens per step",
            "value": ours["tokens_per_step"],
            "unit": "tok",
            "baseline": trl["tokens_per_step"],
            "ratio": ours["tokens_per_step"] / trl["tokens_per_step"],
            "target": "~1 (same work per step)",
        },
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["ours", "trl"])
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows-per-step", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.model, a.steps, a.rows_per_step)
    else:
        print_table(run(a.steps, a.hidden, a.layers, a.rows_per_step))
