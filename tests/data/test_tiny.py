"""The tiny offline model: deterministic files, loadable by transformers, consistent token ids."""

import argparse
import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from open_instruct.model.tiny import add_tiny_parser, build_tiny


def _hashes(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tiny_model_dir, tmp_path):
    again = build_tiny(tmp_path / "again", arch="llama", seed=0)
    first = _hashes(tiny_model_dir)
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= set(first)
    assert _hashes(again) == first


def test_other_seed_gives_other_weights(tiny_model_dir, tmp_path):
    other = build_tiny(tmp_path / "other", seed=1, layers=1)
    assert _hashes(other)["model.safetensors"] != _hashes(tiny_model_dir)["model.safetensors"]


def test_loadable_and_ids_consistent(tiny_model_dir, tiny_tokenizer):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert (model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id) == (
        tok.eos_token_id,
        tok.bos_token_id,
        tok.pad_token_id,
    )
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.config.max_position_embeddings == 512
    assert model.config.tie_word_embeddings is False
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert model.config.vocab_size == len(tok) <= 512
    assert 500_000 < sum(p.numel() for p in model.parameters()) < 3_000_000
    assert tok.chat_template and "<|assistant|>" in tok.chat_template
    out = model(**tok("What is 47 + 85?", return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)


def test_digits_are_single_tokens(tiny_tokenizer):
    ids = tiny_tokenizer("What is 47 + 85? The answer is 132.", add_special_tokens=False)["input_ids"]
    pieces = [tiny_tokenizer.decode([i]) for i in ids]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["4", "7", "8", "5", "1", "3", "2"]
    # No special token is added implicitly: chat templates own BOS placement.
    assert tiny_tokenizer("hi")["input_ids"] == tiny_tokenizer("hi", add_special_tokens=False)["input_ids"]


def test_olmo2_arch(tiny_olmo2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_olmo2_dir)
    tok = AutoTokenizer.from_pretrained(tiny_olmo2_dir)
    assert type(model).__name__ == "Olmo2ForCausalLM"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|endoftext|><|user|>\nhi\n<|assistant|>\n"
    assert json.loads((tiny_olmo2_dir / "config.json").read_text())["pad_token_id"] == tok.pad_token_id


def test_cli_parser(tmp_path):
    ap = argparse.ArgumentParser()
    add_tiny_parser(ap.add_subparsers())
    args = ap.parse_args(["tiny", "--out", str(tmp_path / "m"), "--layers", "1", "--hidden", "64"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_hidden_layers"] == 1


def test_bad_shape_is_a_config_error(tmp_path):
    from open_instruct.errors import ConfigError

    ap = argparse.ArgumentParser()
    add_tiny_parser(ap.add_subparsers())
    args = ap.parse_args(["tiny", "--out", str(tmp_path / "m"), "--hidden", "130"])
    with pytest.raises(ConfigError, match="hidden 130"):
        args.func(args)
