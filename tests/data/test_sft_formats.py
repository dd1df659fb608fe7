"""TRL's SFT row formats -- prompt + completion (text or turns) and `messages` -- load to the canonical
SFT rows and train exactly the completion / the assistant turns; a bad row of each is a one-line
error naming file, line and field; load_mix and validate_mix (the recipe pre-flight) agree."""

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import open_instruct.data.tokenize as T
from open_instruct.data.mixes import load_mix
from open_instruct.data.validate import validate_mix
from open_instruct.errors import DataError

EOS = "<|endoftext|>"
Q1, A1 = "What is 47 + 85?", "7+5=12, 4+8+1=13. The answer is 132."
Q2, A2 = "And 10 + 10?", "0+0=0, 1+1=2. The answer is 20."


def _u(c):
    return {"role": "user", "content": c}


def _a(c):
    return {"role": "assistant", "content": c}


def _s(c):
    return {"role": "system", "content": c}


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _trained(tok, input_ids, labels) -> list[str]:
    """The trained stretches of a sequence, decoded."""
    spans, cur = [], []
    for i, lab in zip(input_ids, labels):
        if lab != -100:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


def _examples(path, tok):
    mix = load_mix(path, kind="sft")
    td = T.tokenize_data(mix, tok, "sft", max_seq_length=512, cache=False)
    return mix, [td.dataset[i] for i in range(len(td.dataset))]


def test_text_prompt_completion_trains_only_the_completion(tmp_path, tok):
    path = _write(tmp_path / "pc.jsonl", [{"prompt": Q1, "completion": A1}])
    mix, (ex,) = _examples(path, tok)
    assert mix.dataset[0] == {"messages": [_u(Q1), _a(A1)], "prompt_turns": 1}
    assert _trained(tok, ex["input_ids"], ex["labels"]) == [A1 + EOS]
    rendered = (
        f"<|user|>\n{Q1}\n<|assistant|>\n{A1}{EOS}"  # the chat template is applied, as for DPO's TRL rows
    )
    assert ex["input_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]
    # the same exchange as a `messages` row gives the very same tokens and labels
    _, (same,) = _examples(_write(tmp_path / "m.jsonl", [{"messages": [_u(Q1), _a(A1)]}]), tok)
    assert (same["input_ids"], same["labels"]) == (ex["input_ids"], ex["labels"])


def test_conversational_prompt_completion_trains_only_the_completion(tmp_path, tok):
    prompt = [_s("Be brief."), _u(Q1), _a(A1), _u(Q2)]  # an earlier assistant turn is context only
    path = _write(tmp_path / "pc.jsonl", [{"prompt": prompt, "completion": [_a(A2)]}])
    mix, (ex,) = _examples(path, tok)
    assert mix.dataset[0] == {"messages": prompt + [_a(A2)], "prompt_turns": 4}
    assert _trained(tok, ex["input_ids"], ex["labels"]) == [A2 + EOS]
    # as `messages`, the same conversation trains every assistant turn (Tülu's SFT)
    _, (msg,) = _examples(_write(tmp_path / "m.jsonl", [{"messages": prompt + [_a(A2)]}]), tok)
    assert msg["input_ids"] == ex["input_ids"]
    assert _trained(tok, msg["input_ids"], msg["labels"]) == [A1 + EOS, A2 + EOS]


def test_formats_mixed_in_one_file_keep_their_text(tmp_path, tok):
    # A column holding text in some rows and turns in others; "3" must stay the text "3"
    # (datasets' own JSON reader would hand it back as the number 3).
    rows = [
        {"prompt": "What is 1 + 2?", "completion": "3"},
        {"prompt": [_u(Q1)], "completion": [_a(A1)]},
        {"messages": [_u(Q2), _a(A2)]},
    ]
    mix, exs = _examples(_write(tmp_path / "mixed.jsonl", rows), tok)
    assert [r["messages"][-1]["content"] for r in mix.dataset] == ["3", A1, A2]
    assert mix.dataset["prompt_turns"] == [1, 1, 0]
    assert [_trained(tok, e["input_ids"], e["labels"]) for e in exs] == [["3" + EOS], [A1 + EOS], [A2 + EOS]]
    check = validate_mix(str(tmp_path / "mixed.jsonl"), "sft", "sft.dataset_mix")
    assert (check.rows, check.kind) == (3, "sft")


def test_parquet_prompt_completion_and_kind_inference(tmp_path, tok):
    import datasets

    path = tmp_path / "pc.parquet"
    datasets.Dataset.from_list(
        [{"prompt": Q1, "completion": A1}, {"prompt": Q2, "completion": A2}]
    ).to_parquet(path)
    mix, exs = _examples(path, tok)
    assert load_mix(path).kind == "sft"  # prompt + completion columns are SFT data
    assert [_trained(tok, e["input_ids"], e["labels"]) for e in exs] == [[A1 + EOS], [A2 + EOS]]
    assert validate_mix(str(path), None, "").kind == "sft"


BAD = [
    (
        "text: completion not text",
        [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": 3}],
        r"line 2: completion must be a string or a list of \{role, content\} turns, got int",
    ),
    (
        "text: no prompt",
        [{"prompt": "q", "completion": "a"}, {"completion": "a"}],
        r"line 2: missing column 'prompt' for sft prompt-completion data \(row has: completion\)",
    ),
    (
        "text: no completion",
        [{"prompt": "q"}],
        r"line 1: missing column 'completion' for sft prompt-completion data \(row has: prompt\)",
    ),
    (
        "turns: a user turn in the completion",
        [{"prompt": [_u("q")], "completion": [_u("more"), _a("a")]}],
        r"line 1: completion\[0\]\.role 'user': a completion holds assistant turns only",
    ),
    (
        "turns: unknown role in the prompt",
        [{"prompt": [{"role": "bot", "content": "q"}], "completion": [_a("a")]}],
        r"line 1: prompt\[0\]\.role 'bot' is not one of system, user, assistant",
    ),
    (
        "turns: prompt neither text nor turns",
        [{"prompt": {"role": "user", "content": "q"}, "completion": [_a("a")]}],
        r"line 1: prompt must be a string or a list of \{role, content\} turns, got dict",
    ),
    (
        "turns: content not text",
        [{"prompt": [_u("q")], "completion": [{"role": "assistant", "content": 7}]}],
        r"line 1: completion\[0\]\.content must be a string, got int",
    ),
    (
        "messages: unknown role",
        [{"messages": [_u("q"), {"role": "bot", "content": "a"}]}],
        r"line 1: messages\[1\]\.role 'bot' is not one of system, user, assistant",
    ),
    (
        "messages: no column at all",
        [{"conversation": [_u("q"), _a("a")]}],
        r"line 1: missing column 'messages' \(or 'prompt' \+ 'completion'\) for sft data \(row has: conversation\)",
    ),
    (
        "text column (language modelling)",
        [{"text": "Once upon a time"}],
        r"line 1: a 'text' column is TRL's plain language-modelling format, which SFT does not read",
    ),
]


@pytest.mark.parametrize("case,rows,pattern", BAD, ids=[b[0] for b in BAD])
def test_a_bad_row_is_one_line_naming_file_line_and_field(tmp_path, case, rows, pattern):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as loaded:
        load_mix(path, kind="sft")
    msg = str(loaded.value)
    assert "\n" not in msg and msg.startswith(f"{path} line"), msg
    assert re.search(pattern, msg), msg
    # the recipe pre-flight raises the very same error, prefixed with the config field
    with pytest.raises(DataError) as checked:
        validate_mix(str(path), "sft", "sft.dataset_mix")
    assert str(checked.value) == f"sft.dataset_mix: {msg}"


def test_unusable_rows_are_dropped_and_counted_alike(tmp_path, caplog):
    rows = [
        {"prompt": Q1, "completion": A1},
        {"prompt": Q1, "completion": "  "},  # empty completion
        {"prompt": "", "completion": A1},  # empty prompt
        {"prompt": [_s("s")], "completion": [_a(A1)]},  # no user turn before the completion
        {"prompt": [_u(Q1), _s("s")], "completion": [_a(A1)]},  # system turn after the start
        {"prompt": [], "completion": [_a(A1)]},
        {"prompt": [_u(Q2)], "completion": [_a(A2)]},
    ]
    path = _write(tmp_path / "p.jsonl", rows)
    mix = load_mix(path, kind="sft")
    assert len(mix.dataset) == 2 and mix.num_dropped == 5
    assert mix.sources[0].first_problem == f"{path} line 2: completion is empty"
    check = validate_mix(str(path), "sft", "")
    assert (check.dropped, check.rows, check.amounts[0].first_problem) == (5, 2, mix.sources[0].first_problem)


def test_a_text_only_file_and_a_wrong_stage_are_one_line_errors(tmp_path):
    text = _write(tmp_path / "lm.jsonl", [{"text": "Once upon a time"}])
    with pytest.raises(
        DataError, match=r"lm\.jsonl: cannot tell the data kind from columns text; a 'text' column"
    ):
        load_mix(text)
    pc = _write(tmp_path / "pc.jsonl", [{"prompt": Q1, "completion": A1}])
    with pytest.raises(
        DataError, match=r"pc\.jsonl has sft columns \(prompt, completion\); this stage needs rlvr"
    ):
        validate_mix(str(pc), "rlvr", "")
