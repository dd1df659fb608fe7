"""The DPO stage end to end on a tiny Llama (CPU): TRL parity, dpo_norm by hand through the stage's
batch path, learning, reference cache, live reference, exact resume, bad input, CLI."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from open_instruct.config import from_dict
from open_instruct.errors import ConfigError, DataError, Interrupted
from open_instruct.train import ref_cache
from open_instruct.train.dpo import DPOConfig, make_batch, make_loss_fn, response_logps, run_dpo

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_mixes" / "samples"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


@pytest.fixture(autouse=True)
def restore_environment():
    # The engine sets ACCELERATE_USE_CPU / ACCELERATE_USE_DEEPSPEED in os.environ when a stage runs
    # in-process; left behind, they change how later tests' subprocesses (torchrun, DeepSpeed) start.
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The 2 CPU cores are shared: two torch threads fighting another process for a core are up to
    # 10x slower than one (measured), so these tests use one.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _reset():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dpo_data")
    rows = (SAMPLES / "preference_train.jsonl").read_text().splitlines()
    (d / "p8.jsonl").write_text("\n".join(rows[:8]) + "\n")
    (d / "p64.jsonl").write_text("\n".join(rows[:64]) + "\n")
    return d


@pytest.fixture(scope="module")
def ref_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its weights perturbed: a reference that differs from the policy, so the
    first-step loss is not trivially log 2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("ref") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _cfg(model, data, out, **kw) -> DPOConfig:
    base = dict(
        model_name_or_path=str(model),
        dataset_mix=str(data),
        output_dir=str(out),
        loss_type="dpo",
        beta=0.1,
        per_device_train_batch_size=8,
        total_batch_size=8,
        max_seq_length=256,
        learning_rate=1e-3,
        warmup_ratio=0.0,
    )
    base.update(kw)
    return from_dict(DPOConfig, base)


def _run(cfg, **kw) -> Path:
    _reset()
    return run_dpo(cfg, **kw)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


# ----------------------------------------------------------------------------- correctness


def test_first_batch_dpo_loss_matches_trl(tiny_model_dir, ref_model_dir, data_dir, tmp_path):
    """Same model, reference, data and beta: TRL 1.16 DPOTrainer's first-batch sigmoid loss and ours."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    out = _run(
        _cfg(
            tiny_model_dir,
            data_dir / "p8.jsonl",
            tmp_path / "ours",
            ref_model_name_or_path=str(ref_model_dir),
            max_train_steps=1,
        )
    )
    ours = _metrics(out)[0]

    rows = [json.loads(line) for line in (data_dir / "p8.jsonl").read_text().splitlines()]
    # TRL's conversational form: prompt turns + the final assistant turn of each side.
    ds = Dataset.from_list(
        [
            {"prompt": r["chosen"][:-1], "chosen": r["chosen"][-1:], "rejected": r["rejected"][-1:]}
            for r in rows
        ]
    )
    losses = []

    class Recording(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    _reset()
    args = TRLConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=8,
        max_steps=1,
        learning_rate=1e-3,
        beta=0.1,
        loss_type=["sigmoid"],
        bf16=False,
        use_cpu=True,
        report_to="none",
        precompute_ref_log_probs=True,
        save_strategy="no",
        logging_steps=1,
        max_length=256,
    )
    trainer = Recording(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        ref_model=AutoModelForCausalLM.from_pretrained(ref_model_dir),
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    trainer.train()
    assert abs(ours["loss"] - math.log(2)) > 1e-3  # a real reference: not the trivial log 2
    assert abs(ours["loss"] - losses[0]) < 1e-5, (ours["loss"], losses[0])


def _hand_logprobs(model, ids: list[int], labels: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for every labelled t, one unpadded sequence at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if labels[t] != -100]


@pytest.mark.parametrize("packing", [False, True])
def test_dpo_norm_loss_through_the_stage_matches_hand_calculation(
    tiny_model_dir, ref_model_dir, data_dir, tmp_path, packing
):
    """The stage's logged first-step loss (tokenise -> collate chosen+rejected -> one forward ->
    cached reference -> loss) against the dpo_norm formula on per-token log-probs computed here."""
    from transformers import AutoModelForCausalLM

    from open_instruct.train import stage

    beta = 5.0
    cfg = _cfg(
        tiny_model_dir,
        data_dir / "p8.jsonl",
        tmp_path / "run",
        loss_type="dpo_norm",
        beta=beta,
        ref_model_name_or_path=str(ref_model_dir),
        max_train_steps=1,
        packing=packing,
    )
    logged = _metrics(_run(cfg))[0]

    tokenizer = stage.load_stage_tokenizer(cfg)
    data = stage.load_tokenized(cfg, tokenizer, kind="preference").dataset
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(ref_model_dir).eval()
    losses, margins = [], []
    for row in data:
        means = {}
        for name, model in (("p", policy), ("r", ref)):
            for side in ("chosen", "rejected"):
                lps = _hand_logprobs(model, row[f"{side}_input_ids"], row[f"{side}_labels"])
                means[name, side] = sum(lps) / len(lps)
        h = (means["p", "chosen"] - means["r", "chosen"]) - (means["p", "rejected"] - means["r", "rejected"])
        losses.append(math.log1p(math.exp(-beta * h)))  # -log sigmoid(beta h)
        margins.append(beta * h)
    assert abs(logged["loss"] - sum(losses) / len(losses)) < 1e-5
    assert abs(logged["rewards/margin"] - sum(margins) / len(margins)) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_padded_and_packed_batches_give_the_same_logps(
    tiny_model_dir, tiny_olmo2_dir, data_dir, tmp_path, arch, attn
):
    """The three layouts of one forward over chosen + rejected agree: shared prompt (the default),
    concatenated + padded, concatenated + packed."""
    from transformers import AutoModelForCausalLM

    from open_instruct.train import stage
    from open_instruct.train.dpo import check_shared_prompt

    model_dir = tiny_model_dir if arch == "llama" else tiny_olmo2_dir
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn).eval()
    results, widths = {}, {}
    for layout, packing in (("shared", False), ("padded", False), ("packed", True)):
        cfg = _cfg(
            model_dir,
            data_dir / "p8.jsonl",
            tmp_path / "x",
            packing=packing,
            max_seq_length=128,
            attn_implementation=attn,
            add_bos=arch == "olmo2",
        )
        tok = stage.load_stage_tokenizer(cfg)
        ds = stage.load_tokenized(cfg, tok, kind="preference").dataset
        batch = make_batch(cfg, tok.pad_token_id, ds, list(range(8)), "cpu", shared=layout == "shared")
        assert batch["num_pairs"] == batch["units"] == 8
        assert ("attention_mask" in batch) is (layout == "padded")  # packed: position_ids; shared: a 4D mask
        widths[layout] = batch["input_ids"].numel()
        with torch.no_grad():
            results[layout] = response_logps(model, batch)
        if layout == "shared":
            assert check_shared_prompt(cfg, model, ds, tok.pad_token_id, "cpu")
    for layout in ("padded", "packed"):
        assert torch.allclose(results["shared"][0], results[layout][0], atol=1e-4)
        assert torch.equal(results["shared"][1], results[layout][1])
    assert widths["shared"] < widths["padded"]  # the prompt is in the batch once, not twice


def test_shared_prompt_falls_back_when_the_model_ignores_the_mask(tiny_model_dir, data_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    from open_instruct.train import stage
    from open_instruct.train.dpo import check_shared_prompt

    cfg = _cfg(tiny_model_dir, data_dir / "p8.jsonl", tmp_path / "x")
    tok = stage.load_stage_tokenizer(cfg)
    ds = stage.load_tokenized(cfg, tok, kind="preference").dataset
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    real_forward = model.forward

    def ignores_custom_masks(**kw):
        if kw.get("attention_mask") is not None and kw["attention_mask"].ndim == 4:
            kw["attention_mask"] = (
                None  # plain causal attention: the rejected response would see the chosen one
            )
        return real_forward(**kw)

    model.forward = ignores_custom_masks
    with caplog.at_level(logging.WARNING):
        assert check_shared_prompt(cfg, model, ds, tok.pad_token_id, "cpu") is False
    assert "using concatenated batches" in caplog.text
    packed = _cfg(tiny_model_dir, data_dir / "p8.jsonl", tmp_path / "x", packing=True)
    assert check_shared_prompt(packed, model, ds, tok.pad_token_id, "cpu") is False  # packing: never shared


@pytest.mark.parametrize("loss_type", ["dpo", "dpo_norm", "simpo", "ipo"])
def test_every_loss_type_trains_one_micro_batch(tiny_model_dir, data_dir, tmp_path, loss_type):
    from transformers import AutoModelForCausalLM

    from open_instruct.train import stage

    cfg = _cfg(
        tiny_model_dir,
        data_dir / "p8.jsonl",
        tmp_path / "x",
        loss_type=loss_type,
        nll_coef=0.5,
        beta=0.5 if loss_type == "ipo" else 0.1,
    )
    tok = stage.load_stage_tokenizer(cfg)
    ds = stage.load_tokenized(cfg, tok, kind="preference").dataset
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = None
    if loss_type != "simpo":  # a reference from a (frozen) copy of the starting model
        with torch.no_grad():
            sums, _ = response_logps(model, make_batch(cfg, tok.pad_token_id, ds, list(range(4)), "cpu"))
        ref = ref_cache.PairLogps(
            torch.zeros(8), torch.zeros(8), torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)
        )
        ref.chosen[:4], ref.rejected[:4] = sums[:4], sums[4:]
    batch = make_batch(cfg, tok.pad_token_id, ds, list(range(4)), "cpu", ref=ref)
    out = make_loss_fn(cfg)(model, batch)
    assert out.units == 4 and torch.isfinite(out.total)
    assert {"dpo_loss", "nll", "rewards/accuracy", "rewards/margin", "logps/chosen"} <= set(out.metrics)
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_length_grouped_plan_keeps_each_steps_pairs_and_sorts_micro_batches():
    import numpy as np

    from open_instruct.train.dpo import LengthGroupedPlan
    from open_instruct.train.engine import BatchPlan

    lengths = np.random.default_rng(0).integers(10, 100, size=50)
    plain = BatchPlan(50, 12, 2.0, seed=3)
    grouped = LengthGroupedPlan(50, 12, 2.0, seed=3, lengths=lengths)
    for step in range(plain.num_steps):
        for rank in range(2):
            a = plain.shard(step, rank, 2, 3)
            b = grouped.shard(step, rank, 2, 3)
            assert sorted(np.concatenate(a).tolist()) == sorted(np.concatenate(b).tolist())
            assert [len(x) for x in a] == [len(x) for x in b]
            flat = lengths[np.concatenate(b)]
            assert (np.diff(flat) <= 0).all()  # longest first, similar lengths together


def test_defaults_are_the_tulu3_8b_dpo_values():
    cfg = DPOConfig(model_name_or_path="m", dataset_mix="d.jsonl", output_dir="o")
    assert (cfg.loss_type, cfg.beta, cfg.learning_rate, cfg.lr_scheduler_type, cfg.warmup_ratio) == (
        "dpo_norm",
        5.0,
        5e-7,
        "linear",
        0.1,
    )
    assert (cfg.num_train_epochs, cfg.max_seq_length, cfg.total_batch_size, cfg.weight_decay) == (
        1.0,
        2048,
        32,
        0.0,
    )
    assert cfg.reference == "cached" and cfg.nll_coef == 0.0 and cfg.label_smoothing == 0.0


# ----------------------------------------------------------------------------- the stage


def test_preference_accuracy_rises_on_the_sample_data(tiny_model_dir, tmp_path):
    out = _run(
        _cfg(
            tiny_model_dir,
            REPO / "data_mixes" / "tiny_preference.yaml",
            tmp_path / "run",
            eval_dataset_mix=str(REPO / "data_mixes" / "tiny_preference_eval.yaml"),
            per_device_train_batch_size=16,
            total_batch_size=32,
            max_train_steps=40,
        )
    )
    ev = json.loads((out / "eval.json").read_text())
    acc = ev["preference_accuracy"]
    assert ev["num_pairs"] == 200 and ev["score"] == "sum_logp"
    assert acc["after"] > acc["before"] + 0.1, acc
    rows = _metrics(out)
    assert len(rows) == 40
    # policy == reference at step 1: rewards are 0 up to float noise (the reference pass batches pairs
    # by length, training at random, so padding and rounding differ), and accuracy is near 0
    assert abs(rows[0]["rewards/margin"]) < 1e-4 and rows[0]["rewards/accuracy"] < 0.25
    assert sum(r["rewards/accuracy"] for r in rows[-10:]) / 10 > 0.6
    assert rows[-1]["rewards/margin"] > 0
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "logps/chosen",
        "logps/rejected",
        "pairs_per_s",
    ):
        assert key in rows[-1]
    assert (out / "dpo_curves.png").is_file() and (out / "model.safetensors").is_file()


def test_reference_cache_is_hit_on_rerun(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    calls = []
    real = ref_cache.compute_pair_logps

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ref_cache, "compute_pair_logps", counting)
    data = tmp_path / "fresh.jsonl"  # data no other test has cached
    rows = (SAMPLES / "preference_train.jsonl").read_text().splitlines()
    data.write_text("\n".join(rows[100:116]) + "\n")
    kw = dict(eval_dataset_mix=str(data_dir / "p8.jsonl"), max_train_steps=2)
    first = _run(_cfg(tiny_model_dir, data, tmp_path / "a", **kw))
    assert calls == ["reference log-probs", "eval (before)", "eval (after)"]
    info = json.loads((first / "dpo_reference.json").read_text())
    assert info["hit"] is False and Path(info["path"]).is_file()
    assert Path(info["path"]).parent == Path(ref_cache.cache_root())
    calls.clear()
    second = _run(_cfg(tiny_model_dir, data, tmp_path / "b", **kw))
    assert calls == ["eval (after)"]  # no reference forward, no "before" forward
    assert json.loads((second / "dpo_reference.json").read_text())["hit"] is True
    assert _metrics(first)[0]["loss"] == _metrics(second)[0]["loss"]
    # A different loss type is a different key: computed again.
    calls.clear()
    _run(_cfg(tiny_model_dir, data, tmp_path / "c", loss_type="dpo_norm", max_train_steps=1))
    assert calls == ["reference log-probs"]
    # simpo has no reference at all.
    calls.clear()
    third = _run(_cfg(tiny_model_dir, data, tmp_path / "d", loss_type="simpo", max_train_steps=1))
    assert calls == [] and json.loads((third / "dpo_reference.json").read_text())["mode"] == "none (simpo)"


def test_live_reference_trains_like_the_cached_one(tiny_model_dir, data_dir, tmp_path):
    kw = dict(max_train_steps=3, loss_type="dpo_norm", beta=2.0)
    cached = _run(_cfg(tiny_model_dir, data_dir / "p64.jsonl", tmp_path / "cached", **kw))
    live = _run(_cfg(tiny_model_dir, data_dir / "p64.jsonl", tmp_path / "live", reference="live", **kw))
    for a, b in zip(_metrics(cached), _metrics(live)):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["rewards/margin"] - b["rewards/margin"]) < 1e-4
    wa, wb = _weights(cached), _weights(live)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_after_interruption_equals_the_uninterrupted_run(tiny_model_dir, data_dir, tmp_path):
    kw = dict(
        max_train_steps=6,
        checkpointing_steps=2,
        per_device_train_batch_size=4,
        total_batch_size=8,
        nll_coef=1.0,
        warmup_ratio=0.2,
    )
    full = _run(_cfg(tiny_model_dir, data_dir / "p64.jsonl", tmp_path / "full", **kw))

    def crash(step, metrics):
        if step == 5:
            raise KeyboardInterrupt("simulated interruption")

    cfg = _cfg(tiny_model_dir, data_dir / "p64.jsonl", tmp_path / "resumed", **kw)
    with pytest.raises(Interrupted, match="dpo interrupted at step 4/6 .*newest checkpoint is step 4"):
        _run(cfg, on_step=crash)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    assert (tmp_path / "resumed" / "checkpoints" / "step_4").is_dir()
    resumed = _run(cfg)
    wa, wb = _weights(full), _weights(resumed)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in _metrics(full)] == [r["loss"] for r in _metrics(resumed)]


@pytest.mark.slow
def test_two_processes_shard_the_reference_pass_and_train_like_one(tiny_model_dir, data_dir, tmp_path):
    """torchrun, 2 CPU processes (gloo): the sharded + gathered reference table equals the single-process
    one, and the losses match (13 eval pairs: shards of unequal size are padded and dropped)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    (tmp_path / "e13.jsonl").write_text(
        "\n".join((SAMPLES / "preference_eval.jsonl").read_text().splitlines()[:13])
    )
    args = [
        "dpo",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data_dir / "p64.jsonl"),
        "--set",
        f"eval_dataset_mix={tmp_path / 'e13.jsonl'}",
        "--set",
        "total_batch_size=16",
        "--set",
        "per_device_train_batch_size=4",
        "--set",
        "max_train_steps=2",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "loss_type=dpo",
        "--set",
        "beta=0.1",
        "--set",
        "max_seq_length=256",
        "--set",
        "reference_batch_size=3",
    ]
    runs = {}
    for name, launcher in (
        ("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]),
        ("one", [sys.executable]),
    ):
        env = dict(
            os.environ,
            OPEN_INSTRUCT_CACHE=str(tmp_path / f"cache_{name}"),
            OMP_NUM_THREADS="1",
            OPEN_INSTRUCT_NO_PROGRESS="1",
        )
        out = tmp_path / name
        proc = subprocess.run(
            [*launcher, "-m", "open_instruct.cli", *args, "--output", str(out)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("held-out preference accuracy") == 1  # one summary, not one per process
        runs[name] = out
    tables = [
        load_file(json.loads((runs[n] / "dpo_reference.json").read_text())["path"]) for n in ("two", "one")
    ]
    assert all(torch.equal(tables[0][k], tables[1][k]) for k in tables[1])
    losses = [[r["loss"] for r in _metrics(runs[n])] for n in ("two", "one")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    evals = [json.loads((runs[n] / "eval.json").read_text()) for n in ("two", "one")]
    assert evals[0]["num_pairs"] == 13 and evals[0]["preference_accuracy"] == evals[1]["preference_accuracy"]


# ----------------------------------------------------------------------------- bad input, CLI


def _pair(q, a, b, prompt_b=None):
    return {
        "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "rejected": [{"role": "user", "content": prompt_b or q}, {"role": "assistant", "content": b}],
    }


def test_bad_pairs_are_counted_dropped_and_reported(tiny_model_dir, tmp_path, caplog):
    good = [
        _pair(f"What is {i} + 1?", f"The answer is {i + 1}.", f"The answer is {i}.") for i in range(10, 14)
    ]
    identical = _pair("What is 2 + 2?", "The answer is 4.", "The answer is 4.")
    other_prompt = _pair("What is 3 + 3?", "The answer is 6.", "The answer is 7.", prompt_b="What is 3 + 4?")
    no_answer = {
        "chosen": [{"role": "user", "content": "Hi"}],
        "rejected": [{"role": "user", "content": "Hi"}],
    }
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "".join(
            json.dumps(r) + "\n" for r in [good[0], identical, good[1], other_prompt, no_answer, *good[2:]]
        )
    )
    with caplog.at_level(logging.WARNING):
        out = _run(
            _cfg(
                tiny_model_dir,
                path,
                tmp_path / "run",
                per_device_train_batch_size=2,
                total_batch_size=2,
                max_train_steps=1,
            )
        )
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 3 of 7" in msg and "line 2" in msg and "identical" in msg
    assert (out / "model.safetensors").is_file()

    all_bad = tmp_path / "all_bad.jsonl"
    all_bad.write_text("".join(json.dumps(r) + "\n" for r in [identical, other_prompt, no_answer]))
    with pytest.raises(DataError, match="all 3 rows are unusable"):
        _run(
            _cfg(tiny_model_dir, all_bad, tmp_path / "bad", per_device_train_batch_size=2, total_batch_size=2)
        )
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_trl_message_list_rows_are_tokenised_like_tulu_rows(tiny_model_dir, tmp_path):
    from open_instruct.train import stage

    q, a, b = "What is 12 + 30?", "2+0=2, 1+3=4. The answer is 42.", "2+0=2, 1+3=4. The answer is 43."
    trl = tmp_path / "trl.jsonl"
    trl.write_text(
        json.dumps(
            {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": b}],
            }
        )
        + "\n"
    )
    tulu = tmp_path / "tulu.jsonl"
    tulu.write_text(json.dumps(_pair(q, a, b)) + "\n")
    got = []
    for path in (trl, tulu):
        cfg = _cfg(tiny_model_dir, path, tmp_path / "x")
        tok = stage.load_stage_tokenizer(cfg)
        got.append(stage.load_tokenized(cfg, tok, kind="preference").dataset[0])
    assert got[0] == got[1]


def test_cli_short_form_with_trl_string_rows(tiny_model_dir, tmp_path, capsys):
    from open_instruct.cli import main

    out = tmp_path / "short"
    code = main(
        [
            "dpo",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(SAMPLES / "preference_trl_sample.jsonl"),
            "--output",
            str(out),
            "--set",
            "total_batch_size=4",
            "--set",
            "per_device_train_batch_size=4",
            "--set",
            "max_train_steps=1",
            "--set",
            "max_seq_length=128",
        ]
    )
    assert code == 0 and (out / "model.safetensors").is_file()
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    # everything not given on the command line is the Tülu 3 8B default
    assert (resolved["loss_type"], resolved["beta"], resolved["learning_rate"]) == ("dpo_norm", 5.0, 5e-7)
    assert resolved["model_name_or_path"] == str(tiny_model_dir) and resolved["total_batch_size"] == 4
    assert str(out) in capsys.readouterr().out


def test_unknown_config_key_is_a_one_line_error(tmp_path, capsys):
    from open_instruct.cli import main

    path = tmp_path / "dpo.yaml"
    path.write_text(
        yaml.safe_dump({"model_name_or_path": "m", "dataset_mix": "d.jsonl", "output_dir": "o", "betta": 0.1})
    )
    assert main(["dpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'betta'" in err and "did you mean 'beta'" in err
    assert main(["dpo", "--config", str(path), "--set", "betta=0.2"]) == 2
    with pytest.raises(ConfigError, match="label_smoothing"):
        _cfg("m", "d.jsonl", "o", loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="give --config"):
        from types import SimpleNamespace

        from open_instruct.train.dpo import dpo_command

        dpo_command(SimpleNamespace(config=None, overrides=[], model=None, data=None, output=None))


def test_example_config_and_recipe_are_valid():
    from open_instruct.config import load_config

    cfg = load_config(DPOConfig, REPO / "examples" / "dpo_config.yaml")
    assert cfg.nll_coef > 0 and cfg.eval_dataset_mix
    recipe = yaml.safe_load((REPO / "recipes" / "dpo_only.yaml").read_text())
    assert [s["type"] for s in recipe["stages"]] == ["dpo"]  # the pipeline's own tests dry-run it


def test_cache_file_is_written_atomically_and_corruption_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("OPEN_INSTRUCT_CACHE", str(tmp_path))
    table = ref_cache.PairLogps(
        torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]), torch.tensor([1, 2]), torch.tensor([3, 4])
    )
    key = ref_cache.cache_key(
        model_digest="m",
        data_hash="d",
        loss_type="dpo",
        max_seq_length=8,
        template="t",
        dtype="torch.float32",
    )
    got, hit = ref_cache.cached_pair_logps(key, 2, lambda: table)
    assert not hit and torch.equal(got.chosen, table.chosen)
    assert [p.name for p in ref_cache.cache_root().iterdir()] == [f"{key}.safetensors"]  # no temp files left
    got, hit = ref_cache.cached_pair_logps(key, 2, lambda: pytest.fail("must not recompute"))
    assert hit and torch.equal(got.rejected_tokens, table.rejected_tokens)
    ref_cache.cache_path(key).write_bytes(b"garbage")
    got, hit = ref_cache.cached_pair_logps(key, 2, lambda: table)
    assert not hit
    shutil.rmtree(tmp_path / "reference_logps")
