"""Collation: the batch contract, and packed rows computing exactly what padded rows do."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from open_instruct.data.collate import (
    pack_collate,
    pack_rows,
    pad_collate,
    preference_collate,
    token_budget_batches,
)

EXAMPLES = [
    {"input_ids": [5, 6, 7, 8], "labels": [5, -100, 7, 8]},
    {"input_ids": [9, 10], "labels": [-100, 10]},
    {"input_ids": [11, 12, 13], "labels": [-100, 12, 13]},
]


def test_pad_collate_contract():
    b = pad_collate(EXAMPLES, pad_token_id=1)
    assert set(b) == {"input_ids", "labels", "position_ids", "attention_mask", "seq_index", "num_sequences"}
    assert b["num_sequences"] == 3
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 1, 1], [11, 12, 13, 1]]
    assert b["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100], [-100, 12, 13, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0], [0, 1, 2, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert b["seq_index"].tolist() == [[0, 0, 0, 0], [1, 1, -1, -1], [2, 2, 2, -1]]
    assert all(b[k].dtype == torch.long for k in ("input_ids", "labels", "position_ids", "attention_mask"))
    assert pad_collate(EXAMPLES, 1, pad_to_multiple_of=8)["input_ids"].shape == (3, 8)


def test_pack_collate_contract():
    b = pack_collate(EXAMPLES, max_tokens_per_row=6, pad_token_id=1)
    assert "attention_mask" not in b and b["num_sequences"] == 3
    # first fit: [0 (4 tokens), 1 (2 tokens)] then [2]
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [11, 12, 13, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 0]]
    assert b["seq_index"].tolist() == [[0, 0, 0, 0, 1, 1], [2, 2, 2, -1, -1, -1]]
    assert b["labels"].tolist() == [[-100, -100, 7, 8, -100, 10], [-100, 12, 13, -100, -100, -100]]
    one = pack_collate(EXAMPLES)
    assert one["input_ids"].shape == (1, 9)
    with pytest.raises(ValueError, match="more than max_tokens_per_row"):
        pack_collate(EXAMPLES, max_tokens_per_row=3)


def test_pack_rows_and_budget_batches():
    assert pack_rows([3, 3, 2, 4, 1], 6) == [[0, 1], [2, 3], [4]]
    batches = token_budget_batches([3, 3, 2, 4, 1], 6)
    assert batches == [[0, 1], [2, 3], [4]]
    shuffled = token_budget_batches(list(range(1, 20)), 25, seed=3)
    assert sorted(i for b in shuffled for i in b) == list(range(19))
    assert all(sum(i + 1 for i in b) <= 25 for b in shuffled)
    assert shuffled == token_budget_batches(list(range(1, 20)), 25, seed=3)
    assert all(len(b) <= 2 for b in token_budget_batches([1] * 9, 100, max_examples=2))


def test_preference_collate_pairs_i_and_i_plus_n():
    rows = [
        {
            "chosen_input_ids": [1, 2, 3],
            "chosen_labels": [-100, -100, 3],
            "rejected_input_ids": [1, 2, 4, 5],
            "rejected_labels": [-100, -100, 4, 5],
            "prompt_length": 2,
        },
        {
            "chosen_input_ids": [6, 7],
            "chosen_labels": [-100, 7],
            "rejected_input_ids": [6, 8],
            "rejected_labels": [-100, 8],
            "prompt_length": 1,
        },
    ]
    b = preference_collate(rows, pad_token_id=0)
    assert b["num_sequences"] == 4
    assert b["input_ids"][:, :2].tolist() == [[1, 2], [6, 7], [1, 2], [6, 8]]
    packed = preference_collate(rows, pad_token_id=0, packing=True)
    assert packed["seq_index"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3]]


def _summed_logprob(model, batch):
    """Sum over labelled tokens of log p(label | prefix), per sequence via seq_index."""
    kwargs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    with torch.no_grad():
        # use_cache=False matters: with a cache transformers 5.19 skips the packed-sequence mask.
        logits = model(**kwargs, use_cache=False).logits.float()
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1], -1)
    mask = labels != -100
    tok = torch.gather(logp, -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    per_seq = torch.zeros(batch["num_sequences"], dtype=torch.float64)
    per_seq.scatter_add_(0, batch["seq_index"][:, 1:][mask], tok[mask].double())
    return per_seq


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_padded_loss(tiny_model_dir, tiny_tokenizer, samples_dir, attn):
    from open_instruct.data.mixes import load_mix
    from open_instruct.data.tokenize import sft_example

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    rows = load_mix(samples_dir / "sft_eval.jsonl").dataset.select(range(6))["messages"]
    examples = [sft_example(tiny_tokenizer, m, 512) for m in rows]
    examples[2] = {k: v[:20] for k, v in examples[2].items()}  # unequal lengths
    padded = _summed_logprob(model, pad_collate(examples, tiny_tokenizer.pad_token_id))
    packed_batch = pack_collate(examples, pad_token_id=tiny_tokenizer.pad_token_id)
    assert packed_batch["input_ids"].shape[0] == 1
    packed = _summed_logprob(model, packed_batch)
    two_rows = _summed_logprob(model, pack_collate(examples, 120, tiny_tokenizer.pad_token_id))
    assert torch.allclose(packed, padded, rtol=1e-5, atol=0)
    assert torch.allclose(two_rows, padded, rtol=1e-5, atol=0)
    assert abs(packed.sum() - padded.sum()) <= 1e-5 * abs(padded.sum())
    # Without restarted positions the sequences would see each other: the check has teeth.
    leaky = dict(packed_batch, position_ids=torch.arange(packed_batch["input_ids"].shape[1]).unsqueeze(0))
    assert not torch.allclose(_summed_logprob(model, leaky), padded, rtol=1e-3)
