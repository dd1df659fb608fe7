"""`open-instruct data inspect`: counts, length statistics, and the trained-token rendering."""

import argparse
import json

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


def test_inspect_flags_dataset_values_that_name_no_verifier(tiny_tokenizer, samples_dir):
    path = str(samples_dir / "rlvr_mixed_sample.jsonl")
    asked = []

    def known(name):
        asked.append(name)
        return name in ("gsm8k", "MATH")

    text = inspect_mix(path, tiny_tokenizer, known_verifier=known)
    assert (
        "WARNING: dataset values that name no verifier (these rows would fail the stage): 'ifeval' 4 rows"
        in text
    )
    assert sorted(asked) == ["MATH", "gsm8k", "ifeval"]
    assert "name no verifier" not in inspect_mix(path, tiny_tokenizer, known_verifier=lambda name: True)
    assert "name no verifier" not in inspect_mix(path, tiny_tokenizer)  # no callback: nothing to judge by


def test_inspect_cli_takes_the_verifier_callbacks_from_its_caller(tiny_model_dir, samples_dir, capsys):
    ap = argparse.ArgumentParser()
    add_data_parser(ap.add_subparsers(), known_verifier=lambda name: name != "MATH")
    args = ap.parse_args(
        ["data", "inspect", str(samples_dir / "rlvr_mixed_sample.jsonl"), "--tokenizer", str(tiny_model_dir)]
    )
    assert args.func(args) == 0
    assert "name no verifier (these rows would fail the stage): 'MATH' 4 rows" in capsys.readouterr().out


def test_inspect_reports_trimmed_prompts(tiny_tokenizer, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q"}], "ground_truth": "1", "dataset": "gsm8k"},
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "1"}],
            "ground_truth": "1",
            "dataset": "gsm8k",
        },
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = inspect_mix(str(path), tiny_tokenizer)
    assert f"{path}: 2 rows read, 0 dropped, 1 trimmed to the prompt, 2 in the mix" in text
    assert (
        f"first trimmed: {path} line 2: messages ended with 1 assistant turn (messages[1:] trimmed)" in text
    )


def test_cli_exits_2_with_one_line_for_bytes_that_are_not_utf8(tiny_model_dir, tmp_path, capsys):
    from open_instruct.cli import main

    path = tmp_path / "r.jsonl"
    good = b'{"messages": [{"role": "user", "content": "q"}], "ground_truth": "1", "dataset": "gsm8k"}\n'
    path.write_bytes(good + good + good.replace(b'"q"', b'"caf\xe9"'))
    assert main(["data", "inspect", str(path), "--tokenizer", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {path} line 3: not valid UTF-8 (byte 0xe9 at byte column 47); save the file as UTF-8\n"
    )
