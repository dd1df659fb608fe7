"""Data mixes: amounts, hashing, normalisation, and one-line errors for bad input."""

import json
import logging
import math
import re
from pathlib import Path

import pytest

from open_instruct.data.mixes import amount_indices, check_amount, load_mix
from open_instruct.errors import DataError


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft(i):
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def pref(i, chosen="good", rejected="bad", prompt=None):
    p = [{"role": "user", "content": prompt or f"q{i}"}]
    return {
        "chosen": p + [{"role": "assistant", "content": f"{chosen}{i}"}],
        "rejected": p + [{"role": "assistant", "content": f"{rejected}{i}"}],
    }


def _mix(tmp_path, sources, seed=0, kind=None, name="mix.yaml"):
    doc = {"seed": seed, "sources": sources}
    if kind:
        doc["kind"] = kind
    p = tmp_path / name
    p.write_text(json.dumps(doc))  # JSON is YAML
    return p


# ----------------------------------------------------------------------------- amounts


def test_fraction_count_and_upsampling_arithmetic():
    assert amount_indices(10, 1.0, 0) == list(range(10))
    half = amount_indices(10, 0.5, 0)
    assert len(half) == 5 and half == sorted(set(half))
    up = amount_indices(10, 2.5, 0)
    assert len(up) == 25 and up[:20] == list(range(10)) * 2 and len(set(up[20:])) == 5
    assert len(amount_indices(10, 3, 0)) == 3  # int = absolute count
    counted = amount_indices(10, 25, 0)
    assert len(counted) == 25 and counted[:20] == list(range(10)) * 2
    assert len(amount_indices(7, 0.5, 0)) == 4  # rounds half up
    assert amount_indices(100, 0.3, 1) == amount_indices(100, 0.3, 1)
    assert amount_indices(100, 0.3, 1) != amount_indices(100, 0.3, 2)


@pytest.mark.parametrize("bad", ["half", -1, 0, 0.0, -0.5, True, math.nan, math.inf, None, [1]])
def test_bad_amount_names_the_field(bad):
    with pytest.raises(DataError, match=r"^m\.yaml sources\[2\]\.amount: .* is not a fraction"):
        check_amount(bad, "m.yaml sources[2]")


def test_mix_yaml_amounts_relative_paths_and_renames(tmp_path):
    _write_jsonl(tmp_path / "data" / "a.jsonl", [sft(i) for i in range(10)])
    _write_jsonl(
        tmp_path / "data" / "b.jsonl", [{"conversation": sft(i)["messages"], "id": i} for i in range(4)]
    )
    mix = _mix(
        tmp_path,
        [
            {"path": "data/a.jsonl", "amount": 0.5},
            {"path": "data/b.jsonl", "amount": 2.5, "columns": {"conversation": "messages"}},
        ],
    )
    m = load_mix(mix, kind="sft")
    assert len(m.dataset) == 5 + 10
    assert m.dataset.column_names == ["messages", "prompt_turns"]
    assert [s.selected for s in m.sources] == [5, 10]
    assert m.sources[0].name.endswith("a.jsonl")
    assert load_mix(mix, kind="sft").content_hash == m.content_hash  # seeded: same rows again


def test_mix_kind_from_yaml_or_columns(tmp_path, samples_dir):
    assert load_mix(samples_dir / "rlvr_eval.jsonl").kind == "rlvr"
    assert load_mix(samples_dir / "preference_eval.jsonl").kind == "preference"
    assert load_mix(samples_dir / "sft_eval.jsonl").kind == "sft"
    _write_jsonl(tmp_path / "a.jsonl", [sft(1)])
    assert load_mix(_mix(tmp_path, [{"path": "a.jsonl"}], kind="sft")).kind == "sft"


def test_sample_mixes_load(repo_root):
    sizes = {
        "tiny_sft": 6000,
        "tiny_sft_eval": 200,
        "tiny_preference": 2000,
        "tiny_preference_eval": 200,
        "tiny_rlvr": 2000,
        "tiny_rlvr_eval": 200,
    }
    for name, n in sizes.items():
        m = load_mix(repo_root / "data_mixes" / f"{name}.yaml")
        assert len(m.dataset) == n and m.num_dropped == 0


def test_real_mix_yamls_parse(repo_root):
    from open_instruct.data.mixes import read_spec

    for name in [
        "tulu3_sft",
        "tulu3_8b_preference",
        "tulu3_70b_preference",
        "rlvr_gsm_math_if",
        "olmo2_sft",
        "olmo2_7b_preference",
        "olmo2_13b_preference",
        "rlvr_gsm",
        "rlvr_math",
    ]:
        spec = read_spec(repo_root / "data_mixes" / f"{name}.yaml")
        assert spec.sources[0].hf.startswith("allenai/") and spec.kind


# ----------------------------------------------------------------------------- content hash


def test_content_hash_stable_and_sensitive(tmp_path):
    rows = [sft(i) for i in range(20)]
    a = load_mix(_write_jsonl(tmp_path / "x" / "a.jsonl", rows)).content_hash
    b = load_mix(_write_jsonl(tmp_path / "y" / "b.jsonl", rows)).content_hash  # other path, same content
    assert a == b
    changed = [sft(i) for i in range(20)]
    changed[7]["messages"][1]["content"] = "a7!"
    assert load_mix(_write_jsonl(tmp_path / "c.jsonl", changed)).content_hash != a
    assert load_mix(_write_jsonl(tmp_path / "d.jsonl", rows[::-1])).content_hash != a  # order-sensitive


# ----------------------------------------------------------------------------- normalisation


def test_preference_formats_normalise_to_full_conversations(tmp_path, samples_dir):
    m = load_mix(samples_dir / "preference_trl_sample.jsonl")
    row = m.dataset[0]
    assert row["chosen"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]
    assert row["rejected"][0] == row["chosen"][0]
    # TRL explicit prompt as messages + assistant-only responses; Tülu with a duplicate `prompt` string.
    u = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    rows = [
        {
            "prompt": u,
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
    ]
    got = load_mix(_write_jsonl(tmp_path / "trl.jsonl", rows), kind="preference").dataset[0]
    assert got["chosen"] == u + [{"role": "assistant", "content": "yes"}]
    tulu = dict(pref(0), prompt="q0")
    got = load_mix(_write_jsonl(tmp_path / "tulu.jsonl", [tulu]), kind="preference").dataset[0]
    assert got == {"chosen": tulu["chosen"], "rejected": tulu["rejected"]}


def test_rlvr_labels_become_text(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q"}], "ground_truth": "12", "dataset": "gsm8k"},
        {"messages": [{"role": "user", "content": "q"}], "ground_truth": '["a"]', "dataset": "x"},
    ]
    m = load_mix(_write_jsonl(tmp_path / "r.jsonl", rows))
    assert m.dataset["ground_truth"] == ["12", '["a"]']


# ----------------------------------------------------------------------------- soft drops


def test_preference_soft_problems_are_dropped_and_counted(tmp_path, caplog):
    rows = [
        pref(0),
        pref(1),
        pref(2, chosen="same", rejected="same"),
        {"chosen": pref(3)["chosen"], "rejected": pref(3, prompt="other")["rejected"]},
        {"chosen": pref(4)["chosen"][:1], "rejected": pref(4)["rejected"]},
        pref(5),
    ]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        m = load_mix(path, kind="preference")
    assert len(m.dataset) == 3 and m.num_dropped == 3
    assert m.sources[0].first_problem == f"{path} line 3: chosen and rejected responses are identical"
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 3 of 6 preference rows" in msg and "line 3" in msg


def test_all_rows_bad_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [pref(i, chosen="x", rejected="x") for i in range(3)])
    with pytest.raises(
        DataError, match=r"p\.jsonl: all 3 rows are unusable; first: .*line 1: chosen and rejected"
    ):
        load_mix(path, kind="preference")


# ----------------------------------------------------------------------------- hard errors

BAD = [
    (
        "unknown role",
        "sft",
        [sft(0), {"messages": [{"role": "bot", "content": "x"}]}],
        r"line 2: messages\[0\]\.role 'bot' is not one of system, user, assistant",
    ),
    (
        "non-string content",
        "sft",
        [{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}],
        r"line 1: messages\[0\]\.content must be a string, got int",
    ),
    ("missing column", "sft", [sft(0), {"conversation": []}], r"line 2: missing column 'messages'"),
    (
        "odd column names quoted",
        "preference",
        [{"\n": False, " ": 1}],
        r"line 1: missing column 'chosen' for preference data \(row has: '\\n', ' '\)",
    ),
    (
        "no assistant turn",
        "sft",
        [{"messages": [{"role": "user", "content": "q"}]}],
        r"line 1: messages has no assistant turn",
    ),
    ("malformed line", "sft", [sft(0), sft(1), '{"messages": [}'], r"line 3: invalid JSON"),
    ("not an object", "sft", ["[1, 2]"], r"line 1: a row must be a JSON object, got list"),
    (
        "rlvr without label",
        "rlvr",
        [{"messages": [{"role": "user", "content": "q"}], "dataset": "gsm8k"}],
        r"line 1: missing column 'ground_truth'",
    ),
    (
        "rlvr without verifier",
        "rlvr",
        [{"messages": [{"role": "user", "content": "q"}], "ground_truth": "1", "dataset": ""}],
        r"line 1: dataset must be a non-empty string",
    ),
    (
        "preference missing rejected",
        "preference",
        [{"chosen": pref(0)["chosen"]}],
        r"line 1: missing column 'rejected'",
    ),
    (
        "preference bare strings without prompt",
        "preference",
        [{"chosen": "a", "rejected": "b"}],
        r"line 1: missing column 'prompt'",
    ),
    (
        "preference bad role",
        "preference",
        [{"chosen": [{"role": "human", "content": "q"}], "rejected": pref(0)["rejected"]}],
        r"line 1: chosen\[0\]\.role 'human' is not one of",
    ),
]


@pytest.mark.parametrize("case,kind,rows,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_name_file_line_and_field(tmp_path, case, kind, rows, pattern):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_mix(path, kind=kind)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)), msg
    assert __import__("re").search(pattern, msg), msg


def test_missing_file_names_the_source(tmp_path):
    mix = _mix(tmp_path, [{"path": "nope.jsonl"}])
    with pytest.raises(
        DataError, match=r"nope\.jsonl: data file not found \(.*mix\.yaml sources\[0\]\.path\)"
    ):
        load_mix(mix, kind="sft")
    with pytest.raises(DataError, match="data file not found"):
        load_mix(tmp_path / "absent.jsonl")


def test_bad_mix_yaml_fields(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [sft(0)])
    with pytest.raises(
        DataError, match=r"mix\.yaml kind: data kind 'images' is not one of sft, preference, rlvr"
    ):
        load_mix(_mix(tmp_path, [{"path": "a.jsonl"}], kind="images"))
    with pytest.raises(DataError, match=r"sources\[0\]: unknown key 'amout' \(did you mean 'amount'\?\)"):
        load_mix(_mix(tmp_path, [{"path": "a.jsonl", "amout": 2}]))
    with pytest.raises(DataError, match=r"sources\[0\]\.amount: 'all' is not a fraction"):
        load_mix(_mix(tmp_path, [{"path": "a.jsonl", "amount": "all"}]))
    with pytest.raises(DataError, match=r"sources\[0\]: give exactly one of 'hf'"):
        load_mix(_mix(tmp_path, [{"path": "a.jsonl", "hf": "x/y"}]))
    with pytest.raises(DataError, match=r"sources\[0\]\.columns: column 'conv' not in"):
        load_mix(_mix(tmp_path, [{"path": "a.jsonl", "columns": {"conv": "messages"}}]))
    with pytest.raises(DataError, match=r"sources is empty"):
        load_mix(_mix(tmp_path, []))


def test_malformed_json_file_names_line(tmp_path):
    p = tmp_path / "rows.json"
    p.write_text('[\n  {"messages": []},\n  {"messages": [}\n]\n')
    with pytest.raises(DataError, match=r"rows\.json line 3: invalid JSON"):
        load_mix(p, kind="sft")


def test_parquet_rows_are_named_by_index(tmp_path):
    import datasets

    p = tmp_path / "rows.parquet"
    datasets.Dataset.from_list([sft(0), {"messages": [{"role": "robot", "content": "x"}]}]).to_parquet(p)
    with pytest.raises(DataError, match=r"rows\.parquet row 1: messages\[0\]\.role 'robot'"):
        load_mix(p, kind="sft")


def test_bad_data_stops_before_other_sources_are_transformed(tmp_path, monkeypatch):
    import open_instruct.data.mixes as mixes

    _write_jsonl(tmp_path / "good.jsonl", [sft(i) for i in range(5)])
    _write_jsonl(tmp_path / "bad.jsonl", [sft(0), {"messages": [{"role": "x", "content": "y"}]}])
    calls = []
    monkeypatch.setattr(mixes, "_finish_source", lambda *a, **k: calls.append(a))
    with pytest.raises(DataError, match="bad.jsonl line 2"):
        load_mix(_mix(tmp_path, [{"path": "good.jsonl"}, {"path": "bad.jsonl"}]), kind="sft")
    assert calls == []


def test_unreachable_hub_id_is_a_one_line_data_error(repo_root):
    # tests run offline (conftest): the error says the source is not in the local cache, and how to fix it
    with pytest.raises(DataError) as err:
        load_mix(repo_root / "data_mixes" / "tulu3_sft.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert re.search(
        r"tulu3_sft\.yaml sources\[0\]\.hf: 'allenai/tulu-3-sft-mixture' is not in the local datasets "
        r"cache and offline mode is on \(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE\); load it once with network",
        msg,
    ), msg


def test_mix_fingerprint_follows_content_not_location(tmp_path):
    from open_instruct.recipe.lineage import mix_fingerprint

    def mix(where, rows, amount=2):
        where.mkdir(parents=True)
        (where / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (where / "m.yaml").write_text(f"kind: sft\nsources:\n- path: d.jsonl\n  amount: {amount}\n")
        return mix_fingerprint(str(where / "m.yaml"))["fingerprint"]

    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": str(i)}]}
        for i in range(3)
    ]
    same = mix(tmp_path / "a", rows)
    assert mix(tmp_path / "b" / "deeper", rows) == same  # moved: same data
    assert mix(tmp_path / "c", rows, amount=3) != same  # another amount
    assert mix(tmp_path / "d", rows[:2] + [rows[0]]) != same  # another file content


# ----------------------------------------------------------------------------- bytes that are not UTF-8


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    bad = json.dumps(sft(1)).replace("q1", "caf\u00e9").encode("latin-1")  # é as the single byte 0xe9
    path.write_bytes(json.dumps(sft(0)).encode() + b"\n\n" + bad + b"\n")
    with pytest.raises(DataError) as err:
        load_mix(path, kind="sft")
    msg = str(err.value)
    assert msg.startswith(f"{path} line 3: not valid UTF-8 (byte 0xe9 at byte column ")
    assert "\n" not in msg


def test_non_utf8_json_file_names_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(
        b'[\n  {"messages": [{"role": "user", "content": "q"},\n'
        + b'  {"role": "assistant", "content": "\xff"}]}\n]\n'
    )
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))} line 3: not valid UTF-8 \(byte 0xff at byte column 37\)"
    ):
        load_mix(path, kind="sft")


def test_non_utf8_mix_yaml_names_line(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [sft(0)])
    mix = tmp_path / "mix.yaml"
    mix.write_bytes(b"# r\xe9sum\xe9 of the mix\nsources:\n  - path: a.jsonl\n")
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(mix))} line 1: not valid UTF-8 \(byte 0xe9 at byte column 4\)"
    ):
        load_mix(mix, kind="sft")


# ----------------------------------------------------------------------------- turn order, empty turns


def _turns(*spec):
    return [{"role": r, "content": c} for r, c in spec]


ORDER = [
    (
        "assistant first",
        _turns(("assistant", "hello"), ("user", "q"), ("assistant", "a")),
        "messages[0] is an assistant turn before any user turn",
    ),
    (
        "assistant right after the system turn",
        _turns(("system", "s"), ("assistant", "hello"), ("user", "q"), ("assistant", "a")),
        "messages[1] is an assistant turn before any user turn",
    ),
    (
        "system in the middle",
        _turns(("user", "q"), ("system", "s"), ("assistant", "a")),
        "messages[1] is a system turn after the conversation started",
    ),
    (
        "two systems",
        _turns(("system", "s"), ("user", "q"), ("system", "t"), ("assistant", "a")),
        "messages has 2 system turns (messages[0], messages[2])",
    ),
    ("empty turn", _turns(("user", "q"), ("assistant", " \n")), "messages[1].content is empty"),
    ("no turns", [], "messages is an empty list"),
]


@pytest.mark.parametrize("case,messages,reason", ORDER, ids=[o[0] for o in ORDER])
def test_sft_rows_in_impossible_order_are_dropped_and_reported(tmp_path, caplog, case, messages, reason):
    path = _write_jsonl(tmp_path / "s.jsonl", [sft(0), sft(1), {"messages": messages}, sft(3)])
    with caplog.at_level(logging.WARNING):
        m = load_mix(path, kind="sft")
    assert len(m.dataset) == 3 and m.num_dropped == 1 and m.sources[0].dropped == 1
    assert m.sources[0].first_problem.startswith(f"{path} line 3: {reason}")
    warned = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warned == [f"{path}: dropped 1 of 4 sft rows with problems; first: {m.sources[0].first_problem}"]


def _rlvr(messages, gt="1", dataset="gsm8k"):
    return {"messages": messages, "ground_truth": gt, "dataset": dataset}


def test_rlvr_order_problems_drop_and_trailing_assistant_turns_are_trimmed(tmp_path, caplog):
    q = _turns(("user", "q"))
    rows = [
        _rlvr(q),
        _rlvr(_turns(("user", "q"), ("assistant", "a"))),  # trimmed
        _rlvr(_turns(("assistant", "a"), ("user", "q"))),  # dropped: assistant first
        _rlvr(_turns(("system", "s"), ("user", "q"), ("assistant", "a"), ("assistant", ""))),  # trimmed
        _rlvr(_turns(("system", "s"), ("system", "t"), ("user", "q"))),  # dropped: two systems
        _rlvr(_turns(("user", ""))),  # dropped: empty prompt turn
    ]
    path = _write_jsonl(tmp_path / "r.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        m = load_mix(path, kind="rlvr")
    src = m.sources[0]
    assert (src.rows, src.dropped, src.trimmed, src.selected) == (6, 3, 2, 3)
    assert m.num_dropped == 3 and m.num_trimmed == 2
    assert m.dataset["messages"] == [q, q, _turns(("system", "s"), ("user", "q"))]
    assert src.first_problem == f"{path} line 3: messages[0] is an assistant turn before any user turn"
    assert src.first_trimmed == f"{path} line 2: messages ended with 1 assistant turn (messages[1:] trimmed)"
    msgs = [r.getMessage() for r in caplog.records]
    assert f"{path}: dropped 3 of 6 rlvr rows with problems; first: {src.first_problem}" in msgs
    assert (
        f"{path}: trimmed trailing assistant turns from 2 of 6 rlvr prompts (kept); first: {src.first_trimmed}"
        in msgs
    )


def test_preference_empty_and_misordered_rows_are_dropped(tmp_path):
    bad_order = {
        "chosen": _turns(("user", "q"), ("system", "s"), ("assistant", "a")),
        "rejected": _turns(("user", "q"), ("system", "s"), ("assistant", "b")),
    }
    rows = [
        pref(0),
        {"prompt": "What?", "chosen": "", "rejected": "no"},  # TRL: empty response
        {"prompt": "  ", "chosen": "yes", "rejected": "no"},  # TRL: empty prompt
        bad_order,
        pref(4),
    ]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    m = load_mix(path, kind="preference")
    assert len(m.dataset) == 2 and m.num_dropped == 3
    assert m.sources[0].first_problem == f"{path} line 2: chosen is empty"


def test_errors_in_a_row_win_over_its_drop(tmp_path):
    # chosen has an empty turn (a drop) but rejected an unknown role (an error): the error is raised.
    row = {
        "chosen": _turns(("user", ""), ("assistant", "a")),
        "rejected": _turns(("human", "q"), ("assistant", "b")),
    }
    path = _write_jsonl(tmp_path / "p.jsonl", [pref(0), row])
    with pytest.raises(DataError, match=r"p\.jsonl line 2: rejected\[0\]\.role 'human' is not one of"):
        load_mix(path, kind="preference")


def test_json_file_rows_are_named_by_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(
        "[\n"
        + ",\n".join(json.dumps(r) for r in [sft(0), sft(1), {"messages": [{"role": "bot", "content": "x"}]}])
        + "\n]\n"
    )
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))} line 4: messages\[0\]\.role 'bot'"):
        load_mix(path, kind="sft")
    lines = tmp_path / "lines.json"  # JSON lines saved as .json: datasets reads them, so do we
    lines.write_text("".join(json.dumps(sft(i)) + "\n" for i in range(3)))
    assert len(load_mix(lines, kind="sft").dataset) == 3


# ----------------------------------------------------------------------------- label checks


def _gsm8k_numbers(dataset, ground_truth):
    if dataset != "gsm8k":
        return None
    try:
        float(ground_truth)
    except ValueError:
        return f"expected a number, got {ground_truth!r}"
    return None


def test_load_mix_label_check_names_file_line_and_verifier(tmp_path):
    q = _turns(("user", "q"))
    rows = [_rlvr(q, "12"), _rlvr(q, "x", dataset="MATH"), _rlvr(q, {"a": 1})]
    path = _write_jsonl(tmp_path / "r.jsonl", rows)
    assert len(load_mix(path, kind="rlvr").dataset) == 3  # no check: loads
    with pytest.raises(DataError) as err:
        load_mix(path, kind="rlvr", label_check=_gsm8k_numbers)
    assert str(err.value) == (
        f'{path} line 3: ground_truth {{"a": 1}} is not a label the gsm8k verifier accepts: '
        "expected a number, got '{\"a\": 1}'"
    )
