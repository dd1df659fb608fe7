"""The learner's log-probs are those of the distribution vLLM samples from: at `temperature: 0.7` the
engines sample from softmax(logits / 0.7) and report that log-prob (logprobs_mode
processed_logprobs); the learner's old/new/reference log-probs must be of the same distribution, or
every importance ratio and KL term of the RL update is off. A real in-process vLLM engine (the RLVR
stage's own engine config) samples; the RLVR learner scores the same tokens.

Dropout is the other source of log-prob noise: the learner turns it off in the policy, the reference
and the value model, and publishes the model with the config it was given."""

from __future__ import annotations

import pytest
import torch

from open_instruct.config import from_dict
from open_instruct.rl.config import RLVRConfig
from open_instruct.rl.experience import build_experience
from open_instruct.rl.learner import Learner
from open_instruct.rl.rlvr import make_loss_fn

TEXTS = ["What is 12 + 34?", "Write a short story about a river.", "the answer is", "What is 90 + 10?"]


def _cfg(model, out, temperature: float, repo_root, **kw) -> RLVRConfig:
    base = dict(
        model_name_or_path=str(model),
        dataset_mix=str(repo_root / "data_mixes/tiny_rlvr.yaml"),
        output_dir=str(out),
        algorithm="grpo",
        num_unique_prompts_rollout=4,
        num_samples_per_prompt_rollout=4,
        per_device_train_batch_size=16,
        max_train_steps=1,
        response_length=16,
        max_prompt_length=64,
        temperature=temperature,
        beta=0.0,
        seed=3,
        rollout={"multiprocess_engine": False, "kv_cache_gib": 0.25},
    )
    return from_dict(RLVRConfig, {**base, **kw}, "rlvr")


@pytest.fixture(scope="module")
def group(ray_session, tiny_model_dir, tmp_path_factory, repo_root):
    """One engine, built from the RLVR stage's own rollout config (dtype, logprobs_mode)."""
    from open_instruct.generation.group import RolloutGroup

    rollout = _cfg(tiny_model_dir, tmp_path_factory.mktemp("cfg"), 0.7, repo_root).rollout_config()
    assert rollout.logprobs_mode == "processed_logprobs"
    g = RolloutGroup(rollout)
    yield g
    g.shutdown()


def _samples(group, tokenizer, temperature: float):
    """Prompts, responses and vLLM's per-token log-probs of 4 x 4 samples at `temperature`."""
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    gen = group.generate(prompts, {"n": 4, "max_tokens": 16, "temperature": temperature, "seed": 5})
    flat = [(p, c) for p, per in zip(prompts, gen.completions) for c in per]
    return [p for p, _ in flat], [list(c.token_ids) for _, c in flat], [c.logprobs for _, c in flat]


def _max_diff(lp: torch.Tensor, prompts, responses, engine_lps) -> float:
    worst = 0.0
    for i, (p, r, e) in enumerate(zip(prompts, responses, engine_lps)):
        mine = lp[i, len(p) : len(p) + len(r)]
        worst = max(worst, float((mine - torch.tensor(e)).abs().max()))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_learner_logprobs_equal_vllm_sampling_logprobs(
    temperature, group, tiny_model_dir, tiny_tokenizer, tmp_path, repo_root
):
    from open_instruct.model.policy import token_logprobs

    prompts, responses, engine_lps = _samples(group, tiny_tokenizer, temperature)
    assert sum(len(r) for r in responses) > 100  # enough tokens to compare
    cfg = _cfg(tiny_model_dir, tmp_path / "out", temperature, repo_root)
    learner = Learner(cfg, tiny_tokenizer, num_updates=1)
    exp = build_experience(prompts, responses, tiny_tokenizer.pad_token_id)

    # the learner's no-grad pass (old and reference log-probs) uses cfg.temperature
    diff = _max_diff(learner.logprobs(exp), prompts, responses, engine_lps)
    print(f"\n[T={temperature}] learner vs vLLM sampling log-probs: max |diff| {diff:.2e}")
    assert diff < 1e-5, f"T={temperature}: learner log-probs differ from vLLM's by {diff:.3g}"

    # the update's own forward (make_loss_fn) too: with the engine's log-probs as the old ones, the
    # ratio is 1 everywhere, so nothing is clipped and the approximate KL is ~0
    batch = exp.rows(list(range(len(responses))))
    old = torch.zeros_like(batch["labels"], dtype=torch.float32)
    for i, (p, e) in enumerate(zip(prompts, engine_lps)):
        old[i, len(p) : len(p) + len(e)] = torch.tensor(e)
    batch.update(old_logp=old, advantages=torch.ones_like(old) * (batch["labels"] != -100))
    learner.module.train()
    out = make_loss_fn(cfg)(learner.model(), batch)
    units = out.units
    assert out.metrics["clip_fraction"] / units == 0.0
    assert abs(out.metrics["approx_kl"] / units) < 1e-9

    if temperature != 1.0:
        # the control: the same samples scored at temperature 1 (what the learner did before) are far
        # off, so the comparison above can fail
        policy = learner.model().policy
        with torch.no_grad():
            wrong = token_logprobs(policy, {k: getattr(exp, k) for k in _BATCH_KEYS}, temperature=1.0)
        off = _max_diff(wrong, prompts, responses, engine_lps)
        print(f"[T={temperature}] scored at T=1 instead: max |diff| {off:.3f}")
        assert off > 0.1, off


_BATCH_KEYS = ("input_ids", "attention_mask", "position_ids", "labels")


# ---- dropout ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dropout_models(tiny_model_dir, tmp_path_factory) -> dict:
    """Models whose configs ask for dropout: the tiny Llama with attention dropout 0.5, and a tiny GPT-2
    with embedding, residual and attention dropout 0.5 (nn.Dropout modules)."""
    import json
    import shutil

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("dropout")
    llama = root / "llama"
    shutil.copytree(tiny_model_dir, llama)
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=128,
            n_embd=64,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.5,
            embd_pdrop=0.5,
            attn_pdrop=0.5,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    gpt2.save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    return {"llama": llama, "gpt2": root / "gpt2"}


def _train_mode_forwards(learner: Learner, exp) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Two forwards of each model, all in train mode (as during an update)."""
    from open_instruct.model.policy import token_logprobs
    from open_instruct.model.value import token_values

    ac = learner.model()
    ac.train()
    learner.ref.train()
    batch = {k: getattr(exp, k) for k in _BATCH_KEYS}
    runs = {
        "policy": lambda: token_logprobs(ac.policy, batch),
        "reference": lambda: token_logprobs(learner.ref, batch),
        "value": lambda: token_values(ac.value, batch),
    }
    with torch.no_grad():
        return {name: (fn(), fn()) for name, fn in runs.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("disabled", [True, False], ids=["disable_dropout", "without"])
def test_rl_learner_runs_policy_reference_and_value_without_dropout(
    arch, disabled, dropout_models, tiny_tokenizer, tmp_path, repo_root, monkeypatch
):
    import json

    from open_instruct.rl import learner as learner_mod

    if not disabled:  # the same setup with the switch taken out: dropout is live, so the test can fail
        monkeypatch.setattr(learner_mod, "disable_dropout", lambda m: m)
    model = dropout_models[arch]
    cfg = _cfg(
        model,
        tmp_path / "out",
        1.0,
        repo_root,
        algorithm="ppo",
        num_samples_per_prompt_rollout=1,
        per_device_train_batch_size=4,
        beta=0.05,
    )
    learner = Learner(cfg, tiny_tokenizer, num_updates=1)
    with torch.no_grad():  # a fresh value head is zeros: values would tie with or without dropout
        for p in learner.model().value.score.parameters():
            p.normal_(0, 1.0)
    prompts = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    exp = build_experience(prompts, [list(range(20, 40))] * len(prompts), tiny_tokenizer.pad_token_id)

    for name, (a, b) in _train_mode_forwards(learner, exp).items():
        diff = float((a - b).abs().max())
        if disabled:
            assert diff == 0.0, f"{arch} {name}: two train-mode forwards differ by {diff:g}"
        else:
            assert diff > 1e-3, f"{arch} {name}: dropout 0.5 left no trace ({diff:g})"

    if disabled:
        # the published model keeps the dropout its config asked for (only training turned it off)
        learner.publish()
        wanted = json.loads((model / "config.json").read_text())
        for out in (tmp_path / "out", tmp_path / "out" / "value_model"):
            saved = json.loads((out / "config.json").read_text())
            keys = [k for k in wanted if "drop" in k]
            assert keys and {k: saved[k] for k in keys} == {k: wanted[k] for k in keys}, out
