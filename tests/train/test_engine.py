"""The engine's loss reductions, schedule and optimizer groups, on a real tiny Llama."""

import copy

import pytest
import torch

from open_instruct.model.policy import token_logprobs
from open_instruct.train.engine import BatchPlan, Engine, TrainConfig, lr_lambda, no_decay
from open_instruct.train.sft import sft_loss


def _batch(seqs, trained):
    """Padded batch by hand: `seqs` token lists, `trained[i]` = how many trailing tokens are labelled."""
    T = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100)
    att = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    seq_index = torch.full((B, T), -1)
    for i, (s, n) in enumerate(zip(seqs, trained)):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        pos[i, : len(s)] = torch.arange(len(s))
        labels[i, len(s) - n : len(s)] = torch.tensor(s[len(s) - n :])
        seq_index[i, : len(s)] = i
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": att,
        "position_ids": pos,
        "seq_index": seq_index,
        "num_sequences": B,
    }


MICRO = [
    _batch([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]], [3, 10]),
    _batch([[30, 31, 32, 33]], [2]),
]


def _grads_after_step(tiny_model_dir, tmp_path, reduction):
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(
        model_name_or_path=str(tiny_model_dir),
        dataset_mix="unused",
        output_dir=str(tmp_path),
        gradient_accumulation_steps=2,
        max_grad_norm=0.0,
        learning_rate=1e-3,
        warmup_ratio=0.0,
    )
    engine = Engine(cfg, tmp_path, reduction=reduction)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = copy.deepcopy(model)
    engine.prepare(model, num_training_steps=10)
    captured = {}
    original = engine.optimizer.step

    def spy(*a, **k):
        captured.update(
            {n: p.grad.clone() for n, p in engine.unwrapped().named_parameters() if p.grad is not None}
        )
        return original(*a, **k)

    engine.optimizer.step = spy
    metrics = engine.step(MICRO, sft_loss)
    return reference, captured, metrics


def _expected_grads(model, reduction):
    model.zero_grad()
    nll = [-token_logprobs(model, b).sum() for b in MICRO]
    counts = [float((b["labels"] != -100).sum()) for b in MICRO]
    if reduction == "sum":  # every labelled token of the effective batch weighs 1/N
        loss = sum(nll) / sum(counts)
    else:  # each micro-batch averaged over its own tokens, then micro-batches averaged
        loss = sum(n / c for n, c in zip(nll, counts)) / len(MICRO)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, float(sum(nll).detach() / sum(counts))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduction_gradients_match_hand_formula(tiny_model_dir, tmp_path, reduction):
    reference, got, metrics = _grads_after_step(tiny_model_dir, tmp_path, reduction)
    expected, token_mean_nll = _expected_grads(reference, reduction)
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=f"{reduction}: {name}")
    # the logged loss is the token-mean NLL of the effective batch in both modes
    assert metrics["loss"] == pytest.approx(token_mean_nll, rel=1e-5)
    assert metrics["units"] == 15


def test_sum_and_mean_differ_with_unequal_lengths(tiny_model_dir, tmp_path):
    ref, _, _ = _grads_after_step(tiny_model_dir, tmp_path / "a", "sum")
    g_sum, _ = _expected_grads(copy.deepcopy(ref), "sum")
    g_mean, _ = _expected_grads(copy.deepcopy(ref), "mean")
    name = "model.embed_tokens.weight"
    assert not torch.allclose(g_sum[name], g_mean[name], rtol=1e-3)


def test_linear_schedule_with_warmup():
    f = lr_lambda("linear", warmup_steps=2, total_steps=10)
    assert [round(f(s), 4) for s in range(4)] == [round(1 / 3, 4), round(2 / 3, 4), 1.0, 0.875]
    assert f(10) == 0.0
    assert lr_lambda("constant", 0, 10)(7) == 1.0


def test_no_weight_decay_on_norms_and_biases(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    flagged = {n for n, p in model.named_parameters() if no_decay(n, p)}
    assert "model.norm.weight" in flagged
    assert "model.layers.0.input_layernorm.weight" in flagged
    assert "model.layers.0.self_attn.q_proj.weight" not in flagged


def test_batch_plan_is_a_pure_function_of_seed_and_step():
    plan = BatchPlan(num_examples=100, effective_batch=8, num_epochs=2, seed=3)
    assert plan.steps_per_epoch == 12 and plan.num_steps == 24
    again = BatchPlan(num_examples=100, effective_batch=8, num_epochs=2, seed=3)
    assert all((plan.indices(s) == again.indices(s)).all() for s in range(24))
    epoch0 = {int(i) for s in range(12) for i in plan.indices(s)}
    assert len(epoch0) == 96  # no repeats within an epoch
    shards = plan.shard(5, process_index=1, world_size=2, accumulation=2)
    assert [len(s) for s in shards] == [2, 2]
    assert set(map(int, sum((list(s) for s in shards), []))) <= set(map(int, plan.indices(5)))
