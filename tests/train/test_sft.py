"""The SFT stage end to end on the sample data with the tiny model: learning, exact resume,
rerun idempotence and config errors."""

import json

import pytest
from safetensors.torch import load_file

from open_instruct.config import load_config
from open_instruct.errors import ConfigError, Interrupted
from open_instruct.train import engine as engine_mod
from open_instruct.train.sft import SFTConfig, run_sft


def _cfg(tiny_model_dir, out, **kw):
    base = dict(
        model_name_or_path=str(tiny_model_dir),
        dataset_mix="data_mixes/tiny_sft.yaml",
        output_dir=str(out),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,
        learning_rate=3e-3,
        warmup_ratio=0.1,
        max_train_steps=12,
        max_seq_length=128,
        seed=7,
    )
    base.update(kw)
    return load_config(SFTConfig, None, [f"{k}={v}" for k, v in base.items()])


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_outputs_are_complete(tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    run_sft(_cfg(tiny_model_dir, out, packing=True, max_train_steps=25))
    losses = _losses(out)
    assert len(losses) == 25
    assert losses[-1] < 0.6 * losses[0], f"loss did not fall enough: {losses[0]:.3f} -> {losses[-1]:.3f}"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "model_manifest.json",
        "sft_curves.png",
        "resolved_config.yaml",
    ):
        assert (out / name).exists(), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert "<|assistant|>" in tok.chat_template
    AutoModelForCausalLM.from_pretrained(out)


def test_interrupted_then_resumed_equals_uninterrupted(tiny_model_dir, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_sft(_cfg(tiny_model_dir, straight, checkpointing_steps=4))

    resumed = tmp_path / "resumed"
    real_step = engine_mod.Engine.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after the step-4 checkpoint, mid-way to the next
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, *a, **k)

    monkeypatch.setattr(engine_mod.Engine, "step", dying_step)
    # Ctrl-C: one line saying where it stopped and how to resume (the CLI prints it, exit 130)
    with pytest.raises(
        Interrupted,
        match=r"^sft interrupted at step 6/12 in .*resumed: the newest checkpoint is step 4; rerun",
    ):
        run_sft(_cfg(tiny_model_dir, resumed, checkpointing_steps=4))
    assert (resumed / "checkpoints" / "step_4").is_dir()
    assert not (resumed / "model.safetensors").exists()
    monkeypatch.setattr(engine_mod.Engine, "step", real_step)

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    run_sft(_cfg(tiny_model_dir, resumed, checkpointing_steps=4))

    a = load_file(straight / "model.safetensors")
    b = load_file(resumed / "model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed run differs from uninterrupted by {worst:g}"
    # the resumed run's metrics read like one run: steps 1..12 once each
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)


def test_rerun_of_a_finished_run_does_nothing(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    run_sft(_cfg(tiny_model_dir, out, max_train_steps=2))
    before = (out / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(engine_mod.Engine, "__init__", lambda *a, **k: pytest.fail("retrained"))
    run_sft(_cfg(tiny_model_dir, out, max_train_steps=2))
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="different config"):
        run_sft(_cfg(tiny_model_dir, out, max_train_steps=3))


@pytest.mark.parametrize(
    "override, message",
    [
        ("learning_rat=1e-5", "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
        ("per_device_train_batch_size=two", "per_device_train_batch_size: expected an integer"),
        ("loss_reduction=avg", "loss_reduction: 'avg' is not one of 'sum', 'mean'"),
        ("total_batch_size=10", "total_batch_size: 10 is not divisible"),
    ],
)
def test_bad_config_names_the_key(tiny_model_dir, tmp_path, override, message):
    args = [
        f"model_name_or_path={tiny_model_dir}",
        "dataset_mix=x.yaml",
        f"output_dir={tmp_path}",
        "per_device_train_batch_size=4",
        override,
    ]
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, args)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_data_file_fails_before_training(tiny_model_dir, tmp_path):
    with pytest.raises(Exception) as e:
        run_sft(_cfg(tiny_model_dir, tmp_path / "o", dataset_mix=str(tmp_path / "nope.jsonl")))
    assert "nope.jsonl" in str(e.value)
