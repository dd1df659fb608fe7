"""LoRA the way PEFT users expect: a LoRA stage publishes a PEFT adapter (and, on request, merged
weights in merged/), both covered by the model manifest; the config's LoRA keys reach PEFT; QLoRA is
refused on a machine without CUDA; a recipe chains a LoRA SFT stage into a LoRA DPO stage, and the
next stage, the reference and vLLM all see base + adapter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from open_instruct.config import load_config
from open_instruct.errors import ConfigError
from open_instruct.model import lora as lora_mod
from open_instruct.train.checkpoint import verify_model
from open_instruct.train.config import SFTConfig

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_mixes" / "samples"
IDS = torch.tensor([[3, 40, 41, 42, 17, 99, 120, 7, 8, 9]])


@pytest.fixture(autouse=True)
def restore_environment():
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _sft_cfg(model, out, **kw):
    base = dict(
        model_name_or_path=str(model),
        dataset_mix=str(REPO / "data_mixes/tiny_sft.yaml"),
        output_dir=str(out),
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        max_train_steps=6,
        max_seq_length=128,
        dtype="float32",
        seed=3,
        use_lora=True,
    )
    base.update(kw)
    return load_config(SFTConfig, None, [f"{k}={v}" for k, v in base.items()])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


@pytest.fixture(scope="module")
def lora_sft_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA SFT stage with non-default LoRA settings and merged weights."""
    from open_instruct.train.sft import run_sft

    out = tmp_path_factory.mktemp("lora_sft") / "sft"
    cfg = _sft_cfg(
        tiny_model_dir,
        out,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lora_target_modules="[q_proj, v_proj]",
        lora_save_merged=True,
    )
    run_sft(cfg)
    return out


def test_lora_stage_publishes_a_peft_adapter_and_merged_weights(lora_sft_dir, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = lora_sft_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "merged/config.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()  # the top level is the adapter, as PEFT saves it
    assert not (out / "README.md").exists()  # not PEFT's template card
    ac = json.loads((out / "adapter_config.json").read_text())
    assert (ac["r"], ac["lora_alpha"], ac["lora_dropout"]) == (8, 16, 0.05)
    assert sorted(ac["target_modules"]) == ["q_proj", "v_proj"]
    assert ac["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    keys = load_file(out / "adapter_model.safetensors")
    assert keys and all(("q_proj" in k or "v_proj" in k) and ".lora_" in k for k in keys)
    assert len(keys) == 4 * 2 * 2  # 4 layers x (q, v) x (A, B)

    # the manifest covers the adapter and merged/; a damaged merged file unpublishes the model
    manifest = json.loads((out / "model_manifest.json").read_text())["files"]
    assert {"adapter_model.safetensors", "merged/model.safetensors", "merged/tokenizer.json"} <= set(manifest)
    assert verify_model(out) is not None

    # peft's own API, transformers' own from_pretrained on the dir, and merged/ give the same model
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    want = _logits(peft_model)
    for other in (
        AutoModelForCausalLM.from_pretrained(out),
        AutoModelForCausalLM.from_pretrained(out / "merged"),
    ):
        assert torch.allclose(_logits(other), want, atol=1e-5)
    assert not torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), want, atol=1e-3)

    damaged = out.parent / "damaged"
    shutil.copytree(out, damaged)
    with open(damaged / "merged" / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    assert verify_model(damaged) is None


def test_policy_load_merges_an_adapter_dir_with_or_without_merged(lora_sft_dir, tmp_path):
    from open_instruct.model.policy import Policy

    want = _logits(Policy.load(str(lora_sft_dir / "merged"), dtype="float32", trainable=False).model)
    adapter_only = tmp_path / "adapter_only"
    shutil.copytree(lora_sft_dir, adapter_only, ignore=shutil.ignore_patterns("merged", "checkpoints"))
    policy = Policy.load(str(adapter_only), dtype="float32", trainable=False)
    assert not lora_mod.is_peft_model(policy.model)  # a plain model: the adapter is merged in
    assert torch.allclose(_logits(policy.model), want, atol=1e-5)

    # vLLM and the value model read from disk: the merged weights are written on first need
    full = lora_mod.full_weights_dir(str(adapter_only))
    assert full == str(adapter_only / "merged")
    from transformers import AutoModelForCausalLM

    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(full)), want, atol=1e-5)
    assert lora_mod.full_weights_dir(str(adapter_only)) == full  # reused
    assert lora_mod.config_dir(str(adapter_only)) == full


def test_default_targets_are_all_linear_and_new_tokens_travel_with_the_adapter(tiny_model_dir, tmp_path):
    """all-linear adapts every projection but the output head; a tokenizer that gained a token resizes
    the embeddings, which then ship with the adapter (else the new row would be random at load)."""
    from open_instruct.model.policy import LoraSettings, Policy, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    policy = Policy.load(str(tiny_model_dir), tokenizer=tok, dtype="float32", lora=LoraSettings(rank=4))
    assert policy.resized_embeddings
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as if trained
    out = tmp_path / "adapter"
    policy.save(out)
    ac = json.loads((out / "adapter_config.json").read_text())
    assert set(ac["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    saved = load_file(out / "adapter_model.safetensors")
    assert any("embed_tokens" in k for k in saved) and any("lm_head" in k for k in saved)
    want = _logits(policy.model)
    loaded = Policy.load(str(out), dtype="float32", trainable=False)
    assert loaded.model.get_input_embeddings().num_embeddings == len(tok)
    assert torch.allclose(_logits(loaded.model), want, atol=1e-5)


def test_lora_keys_in_help_and_their_errors(tiny_model_dir, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "open_instruct.cli", "sft", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0
    for key, words in (
        ("lora_target_modules", "all-linear"),
        ("lora_save_merged", "merged/"),
        ("load_in_4bit", "QLoRA"),
        ("lora_alpha", "alpha / rank"),
    ):
        i = res.stdout.index(key)
        assert words in res.stdout[i : i + 300], key

    assert _sft_cfg(tiny_model_dir, tmp_path, lora_target_modules="q_proj,v_proj").lora_targets == [
        "q_proj",
        "v_proj",
    ]
    for overrides, needle in (
        ({"lora_rank": 0}, "sft.lora_rank: must be >= 1"),
        (
            {"use_lora": False, "lora_save_merged": True},
            "sft.lora_save_merged: applies to LoRA training only",
        ),
        ({"use_lora": False, "load_in_4bit": True}, "sft.load_in_4bit: applies to LoRA training only"),
        ({"lora_target_modules": "[]"}, "sft.lora_target_modules: empty"),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(
                SFTConfig,
                None,
                [f"{k}={v}" for k, v in _base_keys(tiny_model_dir, tmp_path, **overrides).items()],
                where="sft",
            )
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_rlvr_refuses_to_train_an_adapter(tiny_model_dir, tmp_path):
    from open_instruct.config import from_dict
    from open_instruct.rl.config import RLVRConfig

    keys = dict(
        model_name_or_path=str(tiny_model_dir),
        dataset_mix="x.jsonl",
        output_dir=str(tmp_path),
        max_train_steps=1,
    )
    from_dict(RLVRConfig, keys, "rlvr")  # starting from any model is fine
    with pytest.raises(
        ConfigError, match=r"^rlvr.use_lora: RLVR trains full weights; it can start from a LoRA"
    ):
        from_dict(RLVRConfig, {**keys, "use_lora": True}, "rlvr")


def _base_keys(model, out, **kw):
    keys = dict(model_name_or_path=str(model), dataset_mix="x.jsonl", output_dir=str(out), use_lora=True)
    keys.update(kw)
    return keys


def test_qlora_is_refused_on_cpu_with_what_to_install(tiny_model_dir, tmp_path):
    """No CUDA here: `load_in_4bit` is refused in one line before any model is loaded (exit 2)."""
    assert not torch.cuda.is_available()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "open_instruct.cli",
            "sft",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(SAMPLES / "sft_train.jsonl"),
            "--output",
            str(tmp_path / "q"),
            "--set",
            "use_lora=true",
            "--set",
            "load_in_4bit=true",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line, line
    assert line.startswith("error: sft.load_in_4bit: QLoRA needs a CUDA GPU and bitsandbytes")
    assert "no CUDA GPU" in line and "pip install bitsandbytes" in line
    assert not (tmp_path / "q").exists()


def test_qlora_recipe_is_planned_here_but_refused_to_run(tmp_path):
    """The dry run plans a QLoRA stage for the GPU it will run on (4-bit base, adapter-only states);
    running it on this CPU machine is refused in one line before anything is written."""
    from open_instruct.recipe.run import run_recipe

    recipe = tmp_path / "q.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "q",
                "base_model": "meta-llama/Llama-3.1-8B",
                "launch": {"gpu_memory_gb": 24},
                "stages": [
                    {
                        "name": "sft",
                        "type": "sft",
                        "dataset_mix": str(SAMPLES / "sft_train.jsonl"),
                        "chat_template": "tulu",
                        "use_lora": True,
                        "load_in_4bit": True,
                        "gradient_checkpointing": True,
                        "max_seq_length": 4096,
                    }
                ],
            }
        )
    )
    out = tmp_path / "out"
    text = run_recipe(recipe, output=str(out), dry_run=True)
    assert "4-bit NF4 base + LoRA adapter" in text
    assert "41,943,040 trainable parameters (0.52%)" in text
    assert "per training process: 14 GB" in text and "WARNING" not in text  # fits a 24 GB GPU
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe, output=str(out))
    assert str(info.value).startswith(f"{recipe} stage sft.load_in_4bit: QLoRA needs a CUDA GPU")
    assert not out.exists()


def test_qlora_selects_a_4bit_nf4_base(tiny_model_dir, monkeypatch):
    """The GPU path, as far as it runs without CUDA: `load_in_4bit` loads the base through a
    bitsandbytes NF4 config and prepares it for k-bit training before the adapter goes on (the
    4-bit load itself is stubbed: it needs CUDA)."""
    from transformers import AutoModelForCausalLM

    from open_instruct.model.policy import LoraSettings, Policy

    seen = {}

    def fake_load(source, **kw):
        seen.update(kw, source=source)
        return AutoModelForCausalLM.from_pretrained(source)

    monkeypatch.setattr(lora_mod, "load_causal_lm", fake_load)

    def fake_prepare(model, gradient_checkpointing):
        seen["prepared"] = True
        return model

    monkeypatch.setattr(lora_mod, "prepare_4bit", fake_prepare)
    policy = Policy.load(
        str(tiny_model_dir), dtype="float32", lora=LoraSettings(rank=4, load_in_4bit=True), trainable=True
    )
    q = seen["quantization_config"]
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert seen["device_map"] == {"": 0}
    assert "prepared" in seen and lora_mod.is_peft_model(policy.model)


def _recipe(tmp_path: Path) -> Path:
    recipe = {
        "name": "lora_chain",
        "base_model": {"tiny": {"arch": "llama", "seed": 0}},
        "output_dir": str(tmp_path / "run"),
        "defaults": {"chat_template": "tulu", "dtype": "float32", "max_seq_length": 128, "use_lora": True},
        "eval": None,
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset_mix": {
                    "kind": "sft",
                    "sources": [{"path": str(SAMPLES / "sft_train.jsonl"), "amount": 256}],
                },
                "learning_rate": 3e-3,
                "per_device_train_batch_size": 16,
                "max_train_steps": 4,
                "seed": 0,
            },
            {
                "name": "dpo",
                "type": "dpo",
                "dataset_mix": {
                    "kind": "preference",
                    "sources": [{"path": str(SAMPLES / "preference_train.jsonl"), "amount": 48}],
                },
                "loss_type": "dpo",
                "beta": 0.1,
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 8,
                "total_batch_size": 8,
                "max_train_steps": 3,
                "warmup_ratio": 0.0,
                "seed": 0,
            },
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_recipe_chains_lora_sft_into_lora_dpo(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from open_instruct.model.policy import Policy
    from open_instruct.recipe.run import run_recipe

    results = run_recipe(_recipe(tmp_path))
    run = tmp_path / "run"
    assert [r.status for r in results] == ["built", "trained", "trained"]
    sft, dpo = run / "sft", run / "dpo"
    for d in (sft, dpo):
        assert (d / "adapter_model.safetensors").is_file() and not (d / "model.safetensors").exists()
    # the DPO adapter applies to the model DPO started from: the SFT stage (itself base + adapter)
    assert json.loads((dpo / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        sft.resolve()
    )

    # DPO started from base + SFT adapter for the policy AND the cached reference: at step 1 the two
    # are the same model (a fresh adapter is a no-op), so the DPO loss is exactly log 2
    first = json.loads((dpo / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.693147, abs=1e-4)

    # loading the DPO dir follows the chain: base -> + sft adapter (merged) -> + dpo adapter (merged)
    sft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base"), str(sft))
    sft_logits = _logits(sft_model)
    want = _logits(PeftModel.from_pretrained(sft_model.merge_and_unload(), str(dpo)))
    got = Policy.load(str(dpo), dtype="float32", trainable=False).model
    assert torch.allclose(_logits(got), want, atol=1e-5)
    assert not torch.allclose(sft_logits, want, atol=1e-4)  # DPO changed it

    # vLLM's view: merged full weights on disk; the published model still verifies, a rerun skips
    full = lora_mod.full_weights_dir(str(dpo))
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(full)), want, atol=1e-5)
    assert verify_model(dpo) is not None
    again = run_recipe(_recipe(tmp_path))
    assert [r.status for r in again[1:]] == ["skipped", "skipped"]


@pytest.mark.slow
def test_vllm_engine_serves_a_lora_stage(lora_sft_dir, tmp_path, ray_session):
    """A rollout engine started on an adapter dir generates from base + adapter: its log-probs of its own
    greedy tokens match the learner's loaded policy."""
    from open_instruct.generation.config import rollout_config
    from open_instruct.generation.group import RolloutGroup
    from open_instruct.model.policy import Policy, token_logprobs

    adapter_only = tmp_path / "adapter_only"
    shutil.copytree(lora_sft_dir, adapter_only, ignore=shutil.ignore_patterns("merged", "checkpoints"))
    cfg = rollout_config(
        str(adapter_only),
        seed=0,
        max_model_len=128,
        options={"multiprocess_engine": False, "kv_cache_gib": 0.25},
    )
    group = RolloutGroup(cfg)
    try:
        assert group.cfg.model == str(adapter_only / "merged")
        prompt = [3, 40, 41, 42, 17]
        comp = group.generate([prompt], {"temperature": 0.0, "max_tokens": 8}).completions[0][0]
    finally:
        group.shutdown()
    seq = torch.tensor([prompt + comp.token_ids])
    labels = seq.clone()
    labels[:, : len(prompt)] = -100
    batch = {"input_ids": seq, "labels": labels, "position_ids": torch.arange(seq.shape[1])[None]}
    policy = Policy.load(str(adapter_only), dtype="float32", trainable=False)
    with torch.no_grad():
        learner = token_logprobs(policy.model, batch)[0, len(prompt) :].tolist()
    assert max(abs(a - b) for a, b in zip(learner, comp.logprobs)) < 1e-3
