"""The dry-run memory estimator and planning helpers, checked against hand arithmetic."""

import pytest

from open_instruct.recipe import memory as P

GB = 1e9


def test_param_counts_match_published():
    for arch, _ in P.KNOWN_ARCHS.values():
        assert P.count_params(arch) == arch.published_params, arch.name


def test_param_count_matches_a_real_model(tiny_model):
    arch = P.arch_from_hf_config(tiny_model.config.to_dict(), "tiny")
    assert P.count_params(arch) == sum(p.numel() for p in tiny_model.parameters())


def test_resolve_arch_by_name_and_local_config(tiny_model_dir):
    assert P.resolve_arch("meta-llama/Llama-3.1-8B").name == "Llama-3.1-8B"
    assert P.resolve_arch("allenai/Llama-3.1-Tulu-3-8B-RM").name == "Llama-3.1-8B"
    assert P.resolve_arch("allenai/Llama-3.1-Tulu-3-70B-SFT").name == "Llama-3.1-70B"
    assert P.resolve_arch("allenai/OLMo-2-1124-13B").name == "OLMo-2-1124-13B"
    assert P.resolve_arch("allenai/OLMo-2-1124-7B-RM").name == "OLMo-2-1124-7B"
    assert P.resolve_arch("someone/unknown-model") is None
    local = P.resolve_arch(str(tiny_model_dir))
    assert (local.hidden, local.layers, local.kv_heads) == (128, 4, 2)


def test_8b_weights_gradients_adamw_under_zero():
    arch, _ = P.KNOWN_ARCHS["Llama-3.1-8B"]
    n = 8_030_261_248
    common = dict(params=n, micro_batch=1, seq_len=16, gradient_checkpointing=True, w=2)
    # bf16 weights of the 8B model: 2 bytes x 8.03e9 = 16.06 GB
    z0 = P.training_memory(arch, processes=8, zero_stage=0, **common)
    assert z0["weights"] / GB == pytest.approx(16.06, abs=0.005)
    assert z0["gradients"] / GB == pytest.approx(16.06, abs=0.005)
    # no DeepSpeed: AdamW m and v in the weights' dtype (2 x 2 bytes), no master copy
    assert z0["optimizer"] == n * 4
    # ZeRO-2 over 8: gradients and fp32 master + m + v (4 + 4 + 4 bytes) sharded, weights replicated
    z2 = P.training_memory(arch, processes=8, zero_stage=2, **common)
    assert z2["weights"] == n * 2
    assert z2["gradients"] == n * 2 / 8
    assert z2["optimizer"] / GB == pytest.approx(12 * 8.030261248 / 8, rel=1e-9)  # 12.045 GB
    # ZeRO-3 over 8: everything sharded
    z3 = P.training_memory(arch, processes=8, zero_stage=3, **common)
    assert z3["weights"] / GB == pytest.approx(2.0076, abs=1e-3)
    assert z3["gradients"] == z3["weights"]
    assert z3["optimizer"] == z2["optimizer"]
    # optimizer offloaded to the CPU: none of it on the GPU
    assert (
        P.training_memory(arch, processes=8, zero_stage=3, offload_optimizer=True, **common)["optimizer"] == 0
    )


def test_activation_and_logit_formulas_by_hand():
    a = P.Arch("toy", hidden=4, layers=2, heads=2, kv_heads=1, ffn=8, vocab=10)
    # per token and layer: 8h + w(6h + 3kv + 4f) = 32 + 2 * (24 + 6 + 32) = 156 bytes (kv = 1 x 2)
    assert P.activation_bytes_per_token_layer(a, 2) == 156
    kw = dict(params=0, processes=1, zero_stage=0, micro_batch=2, seq_len=3, w=2)
    full = P.training_memory(a, gradient_checkpointing=False, **kw)
    assert full["activations"] == 2 * 6 * 156  # L x tokens x per-layer
    ckpt = P.training_memory(a, gradient_checkpointing=True, **kw)
    assert ckpt["activations"] == 2 * 6 * 4 * 2 + 6 * 156  # saved layer inputs + one layer recomputed
    assert full["logits"] == 6 * 10 * (2 + 8)


def test_kv_cache_per_token_8b():
    arch, _ = P.KNOWN_ARCHS["Llama-3.1-8B"]
    # K and V x 32 layers x 8 kv heads x 128 dims x 2 bytes = 128 KiB per token
    assert P.kv_cache_bytes(arch, 1) == 2 * 32 * 8 * 128 * 2 == 131072


def test_zero_stage_from_config(tmp_path):
    assert P.zero_stage_of(None) == (0, False)
    assert P.zero_stage_of("zero3") == (3, False)
    cfg = tmp_path / "ds.json"
    cfg.write_text('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}')
    assert P.zero_stage_of(str(cfg)) == (3, True)


def test_rlvr_estimate_adds_reference_value_model_and_engine():
    from open_instruct.config import from_dict
    from open_instruct.rl.rlvr import RLVRConfig

    cfg = from_dict(
        RLVRConfig,
        {
            "model_name_or_path": "m",
            "dataset_mix": "d.yaml",
            "output_dir": "o",
            "total_episodes": 1000,
            "num_unique_prompts_rollout": 8,
            "per_device_train_batch_size": 1,
            "max_prompt_length": 1024,
            "response_length": 1024,
            "beta": 0.05,
            "algorithm": "ppo",
            "deepspeed": "zero3",
            "gradient_checkpointing": True,
        },
    )
    arch, _ = P.KNOWN_ARCHS["Llama-3.1-8B"]
    mem = P.estimate_memory("rlvr", cfg, arch, processes=1)
    n = arch.published_params
    assert mem.learner["reference"] == n * 2
    value_params = n - arch.vocab * arch.hidden + arch.hidden  # scalar head instead of the LM head
    # one learner process: ZeRO-3 shards nothing; bf16 weights + grads + fp32 master/m/v = 16 bytes each
    assert mem.learner["weights"] + mem.learner["gradients"] + mem.learner["optimizer"] == n * 16
    assert value_params * 16 < mem.learner["value model"] < value_params * 16 + 10 * GB  # + its activations
    assert mem.engine["weights"] == n * 2
    assert mem.engine["kv cache"] == P.kv_cache_bytes(arch, 8 * 2048)
    # 7 learner processes (Tülu 3's PPO run): ZeRO-3 shards policy states, reference and value model
    mem7 = P.estimate_memory("rlvr", cfg, arch, processes=7)
    assert mem7.learner["reference"] == n * 2 / 7
    states = mem7.learner["weights"] + mem7.learner["gradients"] + mem7.learner["optimizer"]
    assert states == pytest.approx(n * 16 / 7)
    assert mem7.learner["value model"] < mem.learner["value model"] / 4
    # ZeRO-2: weights replicated, but the reference runs as a ZeRO-3 inference engine: sharded too
    cfg.deepspeed = "zero2"
    mem7 = P.estimate_memory("rlvr", cfg, arch, processes=7)
    assert mem7.learner["weights"] == n * 2 and mem7.learner["reference"] == n * 2 / 7


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"], ["down_proj", "k_proj"]])
def test_lora_trainable_count_matches_peft(tiny_model, targets):
    """The plan's adapter size is what PEFT really makes trainable on the same model."""
    from open_instruct.model.lora import apply_lora
    from open_instruct.model.policy import LoraSettings

    arch = P.arch_from_hf_config(tiny_model.config.to_dict(), "tiny")
    model = apply_lora(tiny_model, LoraSettings(rank=8, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert P.lora_plan(arch, 8, targets).trainable == trainable > 0


def _sft_cfg(**keys):
    from open_instruct.config import from_dict
    from open_instruct.train.config import SFTConfig

    base = {"model_name_or_path": "m", "dataset_mix": "d.yaml", "output_dir": "o", "max_seq_length": 2048}
    return from_dict(SFTConfig, {**base, **keys}, "sft")


def test_lora_8b_on_one_gpu_by_hand(monkeypatch):
    """LoRA rank 16 on all linear layers of Llama 3.1 8B: r * (9h + 2kv + 3f) per layer = 16 x 81,920
    x 32 layers = 41,943,040 trainable parameters; only they have gradients and AdamW states."""
    arch, _ = P.KNOWN_ARCHS["Llama-3.1-8B"]
    n, t = arch.published_params, 41_943_040
    full = P.estimate_memory("sft", _sft_cfg(gradient_checkpointing=True), arch, processes=1)
    lora = P.estimate_memory("sft", _sft_cfg(gradient_checkpointing=True, use_lora=True), arch, processes=1)
    assert P.lora_plan(arch, 16, "all-linear").trainable == t
    # no DeepSpeed: bf16 base + fp32 adapter; fp32 adapter gradients; AdamW m and v in fp32
    assert lora.learner["weights"] == n * 2 + t * 4
    assert lora.learner["gradients"] == t * 4
    assert lora.learner["optimizer"] == t * 8
    assert lora.learner["activations"] == full.learner["activations"]  # no dropout: nothing more kept
    assert full.learner_total / GB > 60 and lora.learner_total / GB < 25
    assert any("41,943,040 trainable parameters (0.52%)" in note for note in lora.notes)
    # dropout keeps a copy of each targeted layer's input: q, k, v, o, gate, up (h each) + down (f)
    drop = P.estimate_memory(
        "sft", _sft_cfg(gradient_checkpointing=True, use_lora=True, lora_dropout=0.1), arch, processes=1
    )
    extra = drop.learner["activations"] - lora.learner["activations"]
    assert extra == 2048 * 2 * (6 * 4096 + 14336)  # one layer recomputed at a time: its tokens only
    # QLoRA: the linear layers' weights (6.98e9 of the 8.03e9) in 4.127 bits, the rest bf16
    monkeypatch.setattr("open_instruct.model.lora.qlora_unavailable", lambda: None)
    q = P.estimate_memory("sft", _sft_cfg(use_lora=True, load_in_4bit=True), arch, processes=1)
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert q.learner["weights"] == pytest.approx((n - linear) * 2 + linear * 4.127 / 8 + t * 4)
    assert 5.5 < q.learner["weights"] / GB < 6.0


def test_lora_under_zero3_and_unknown_targets():
    arch, _ = P.KNOWN_ARCHS["Llama-3.1-70B"]
    n = arch.published_params
    cfg = _sft_cfg(use_lora=True, lora_target_modules="q_proj,v_proj,qkv_proj", deepspeed="zero3")
    mem = P.estimate_memory("sft", cfg, arch, processes=8)
    t = 80 * 16 * ((8192 + 8192) + (8192 + 1024))
    # DeepSpeed trains the adapter in bf16 with an fp32 master copy + m + v, all sharded over 8
    assert mem.learner["weights"] == pytest.approx((n * 2 + t * 2) / 8)
    assert mem.learner["gradients"] == pytest.approx(t * 2 / 8)
    assert mem.learner["optimizer"] == pytest.approx(t * 12 / 8)
    assert any("unknown layer names): qkv_proj" in note for note in mem.notes)


def test_mix_amounts_local_and_hints(tmp_path):
    """The dry run plans rows per source: local files counted (every row read), hub sources from their
    `num_rows` hint, unknown without one (then the total is unknown too)."""
    from open_instruct.data.validate import validate_mix

    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
            for _ in range(10)
        )
    )
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        f"sources:\n  - path: {data}\n    amount: 2.5\n  - hf: org/data\n    amount: 0.5\n"
        "    num_rows: 1000\n  - hf: org/other\n    amount: 0.1\n"
    )
    chk = validate_mix(str(mix), "sft", "test")
    assert [a.selected for a in chk.amounts] == [25, 500, None]
    assert [a.how for a in chk.amounts] == ["counted", "num_rows hint", "unknown"]
    assert chk.rows is None
    mix.write_text(
        f"sources:\n  - path: {data}\n    amount: 2.5\n  - hf: org/data\n    amount: 0.5\n    num_rows: 1000\n"
    )
    assert validate_mix(str(mix), "sft", "test").rows == 525
