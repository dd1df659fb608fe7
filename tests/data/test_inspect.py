"""`open-instruct data inspect`: counts, length statistics, and the trained-token rendering."""

import argparse

from open_instruct.data.inspect import add_data_parser, inspect_mix, length_stats, show_trained


def test_length_stats():
    assert length_stats([1, 2, 3, 4, 100]) == {"min": 1, "mean": 22.0, "p50": 3, "p95": 80, "max": 100}


def test_show_trained_brackets(tiny_tokenizer):
    ids = tiny_tokenizer("ab cd", add_special_tokens=False)["input_ids"]
    labels = [-100] + ids[1:]
    assert (
        show_trained(tiny_tokenizer, ids, labels)
        == f"{tiny_tokenizer.decode(ids[:1])}[{tiny_tokenizer.decode(ids[1:])}]"
    )
    assert "\x1b[32m" in show_trained(tiny_tokenizer, ids, labels, color=True)


def test_inspect_sft_report(tiny_tokenizer, repo_root):
    text = inspect_mix(
        str(repo_root / "data_mixes" / "tiny_sft_eval.yaml"), tiny_tokenizer, max_seq_length=64
    )
    assert "kind sft, 200 rows" in text
    assert "sft_eval.jsonl: 200 rows read, 0 dropped, 200 in the mix" in text
    assert "tokenised: 200 rows, 0 dropped by the transform (max_seq_length 64)" in text
    assert "tokens per example: min" in text and "p95" in text
    assert "<|assistant|>\n[" in text and ". The answer is" in text and "<|endoftext|>]" in text


def test_inspect_cli_preference_and_rlvr(tiny_model_dir, samples_dir, capsys):
    ap = argparse.ArgumentParser()
    add_data_parser(ap.add_subparsers())
    for path, needle in [
        (samples_dir / "preference_trl_sample.jsonl", "--- rejected:"),
        (samples_dir / "rlvr_mixed_sample.jsonl", "verifiers (dataset column): MATH 4, gsm8k 4, ifeval 4"),
    ]:
        args = ap.parse_args(["data", "inspect", str(path), "--tokenizer", str(tiny_model_dir)])
        assert args.func(args) == 0
        assert needle in capsys.readouterr().out
