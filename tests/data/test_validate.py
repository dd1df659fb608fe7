"""validate_mix: every row of every local source checked, streamed, with load_mix's rules and counts."""

import json
import logging
import re
from pathlib import Path

import pytest

from open_instruct.data.mixes import load_mix
from open_instruct.data.validate import MixCheck, SourceCheck, validate_mix
from open_instruct.errors import DataError


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _turns(*spec):
    return [{"role": r, "content": c} for r, c in spec]


def sft(i):
    return {"messages": _turns(("user", f"q{i}"), ("assistant", f"a{i}"))}


def rlvr(i, dataset="gsm8k", gt=None, messages=None):
    return {
        "messages": messages or _turns(("user", f"q{i}")),
        "ground_truth": str(i) if gt is None else gt,
        "dataset": dataset,
    }


def _mix(tmp_path, sources, kind=None, name="mix.yaml") -> Path:
    doc = {"seed": 3, "sources": sources}
    if kind:
        doc["kind"] = kind
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


@pytest.fixture(autouse=True)
def _no_datasets(monkeypatch):
    """validate_mix must not build a datasets.Dataset: any attempt fails the test."""
    import datasets

    def refuse(*a, **k):
        raise AssertionError("validate_mix loaded a dataset")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def test_amounts_counts_and_verifier_names_match_load_mix(tmp_path, monkeypatch):
    rows_a = [rlvr(i) for i in range(10)]
    rows_a[3] = rlvr(3, messages=_turns(("assistant", "x"), ("user", "q")))  # dropped
    rows_a[5] = rlvr(5, messages=_turns(("user", "q"), ("assistant", "a")))  # trimmed
    _write_jsonl(tmp_path / "a.jsonl", rows_a)
    _write_jsonl(tmp_path / "b.jsonl", [rlvr(i, dataset="MATH") for i in range(4)])
    sources = [
        {"path": "a.jsonl", "amount": 0.5},
        {"path": "b.jsonl", "amount": 2.5},
        {"hf": "org/big", "amount": 0.1, "num_rows": 1000},
    ]
    chk = validate_mix(str(_mix(tmp_path, sources)), "rlvr", "rlvr.dataset_mix")
    assert isinstance(chk, MixCheck) and chk.kind == "rlvr"
    a, b, hub = chk.amounts
    assert a == SourceCheck(
        str(tmp_path / "a.jsonl"),
        10,
        5,  # half of the 9 rows left after the drop, rounded half up, as load_mix samples
        "counted",
        dropped=1,
        trimmed=1,
        first_problem=f"{tmp_path / 'a.jsonl'} line 4: messages[0] is an assistant turn before any user turn",
        first_trimmed=f"{tmp_path / 'a.jsonl'} line 6: messages ended with 1 assistant turn (messages[1:] trimmed)",
    )
    assert (b.rows, b.selected, b.how) == (4, 10, "counted")
    assert (hub.name, hub.rows, hub.selected, hub.how) == ("org/big [train]", 1000, 100, "num_rows hint")
    assert chk.rows == 115 and chk.dropped == 1 and chk.trimmed == 1
    assert chk.dataset_names == {"gsm8k", "MATH"}

    # load_mix agrees on every local source (the hub source is left out: tests have no network)
    monkeypatch.undo()
    local = _mix(tmp_path, sources[:2], name="local.yaml")
    loaded = load_mix(local, kind="rlvr")
    assert [(s.rows, s.dropped, s.trimmed, s.selected) for s in loaded.sources] == [
        (10, 1, 1, 5),
        (4, 0, 0, 10),
    ]
    assert validate_mix(str(local), "rlvr", "x").rows == len(loaded.dataset) == 15


def test_unknown_hub_size(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [sft(i) for i in range(3)])
    chk = validate_mix(
        str(_mix(tmp_path, [{"path": "a.jsonl"}, {"hf": "org/x", "subset": "s", "amount": 0.5}])), "sft", "w"
    )
    assert (chk.amounts[1].name, chk.amounts[1].rows, chk.amounts[1].selected, chk.amounts[1].how) == (
        "org/x:s [train]",
        None,
        None,
        "unknown",
    )
    assert chk.rows is None and chk.dataset_names == set()


def test_every_row_is_read_not_the_first_few(tmp_path):
    rows = [sft(i) for i in range(3000)]
    rows[2499] = {"messages": _turns(("user", "q"), ("robot", "a"))}
    path = _write_jsonl(tmp_path / "big.jsonl", rows)
    with pytest.raises(DataError) as err:
        validate_mix(str(path), "sft", "sft.dataset_mix")
    assert str(err.value) == (
        f"sft.dataset_mix: {path} line 2500: messages[1].role 'robot' is not one of system, user, assistant"
    )


def test_parquet_is_read_in_batches_to_the_last_row(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [sft(i) for i in range(2500)]
    rows[2400] = {"messages": _turns(("user", "q"), ("assistant", ""))}  # dropped
    rows[2401] = {"messages": _turns(("user", "q"))}  # an error: no assistant turn
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(
        DataError, match=rf"^w: {re.escape(str(path))} row 2401: messages has no assistant turn"
    ):
        validate_mix(str(path), "sft", "w")
    rows[2401] = sft(2401)
    pq.write_table(pa.Table.from_pylist(rows), path)
    chk = validate_mix(str(path), "sft", "w")
    assert (chk.amounts[0].rows, chk.amounts[0].selected, chk.dropped) == (2500, 2499, 1)
    assert chk.amounts[0].first_problem == f"{path} row 2400: messages[1].content is empty"


def test_json_whole_file_rows_by_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(json.dumps(rlvr(i)) for i in range(5)) + "\n]\n")
    chk = validate_mix(str(path), "rlvr", "w")
    assert chk.rows == 5 and chk.dataset_names == {"gsm8k"}
    path.write_text(
        "[\n" + ",\n".join(json.dumps(rlvr(i, gt=None if i != 3 else True)) for i in range(5)) + "\n]\n"
    )
    with pytest.raises(DataError, match=rf"^w: {re.escape(str(path))} line 5: ground_truth must be a string"):
        validate_mix(str(path), "rlvr", "w")


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b"".join(json.dumps(rlvr(i)).encode() + b"\n" for i in range(4)) + b'{"messages": "\x80"}\n'
    )
    with pytest.raises(DataError) as err:
        validate_mix(str(path), "rlvr", "rlvr.dataset_mix")
    assert str(err.value) == (
        f"rlvr.dataset_mix: {path} line 5: not valid UTF-8 (byte 0x80 at byte column 15); save the file as UTF-8"
    )
    mix = tmp_path / "m.yaml"
    mix.write_bytes(b"kind: rlvr\nsources:\n  - path: r.jsonl  # \xa0\n")
    with pytest.raises(DataError, match=rf"^w: {re.escape(str(mix))} line 3: not valid UTF-8"):
        validate_mix(str(mix), "rlvr", "w")


def test_label_check_names_file_line_and_verifier(tmp_path):
    rows = [rlvr(i) for i in range(200)]
    rows[150] = rlvr(150, gt={"value": 3})
    rows[100] = rlvr(
        100, gt="oops", messages=_turns(("assistant", "a"))
    )  # dropped: its label is not asked about
    path = _write_jsonl(tmp_path / "x.jsonl", rows)
    asked = []

    def check(dataset, ground_truth):
        asked.append((dataset, ground_truth))
        if dataset == "gsm8k" and not ground_truth.lstrip("-").isdigit():
            kind = "a dict" if ground_truth.startswith("{") else repr(ground_truth)
            return f"expected a number, got {kind}"
        return None

    with pytest.raises(DataError) as err:
        validate_mix(str(path), "rlvr", "rlvr.dataset_mix", label_check=check)
    assert str(err.value) == (
        f'rlvr.dataset_mix: {path} line 151: ground_truth {{"value": 3}} is not a label the gsm8k verifier '
        "accepts: expected a number, got a dict"
    )
    assert ("gsm8k", "oops") not in asked and asked[-1] == ("gsm8k", '{"value": 3}')


def test_kind_mismatch_and_missing_file(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [sft(0)])
    with pytest.raises(
        DataError,
        match=r"^rlvr\.dataset_mix: .*a\.jsonl has sft columns \(messages\); this stage needs rlvr data$",
    ):
        validate_mix(str(tmp_path / "a.jsonl"), "rlvr", "rlvr.dataset_mix")
    with pytest.raises(DataError, match=r"^w: .*mix\.yaml is a 'sft' mix; this stage needs 'rlvr' data$"):
        validate_mix(str(_mix(tmp_path, [{"path": "a.jsonl"}], kind="sft")), "rlvr", "w")
    with pytest.raises(
        DataError, match=r"^w: .*nope\.jsonl: data file not found \(.*mix\.yaml sources\[0\]\.path\)$"
    ):
        validate_mix(str(_mix(tmp_path, [{"path": "nope.jsonl"}])), "sft", "w")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"^w: .*empty\.jsonl: the file has no rows$"):
        validate_mix(str(tmp_path / "empty.jsonl"), "sft", "w")


def test_all_rows_dropped_is_an_error_and_drops_are_logged(tmp_path, caplog):
    path = _write_jsonl(
        tmp_path / "s.jsonl", [sft(0), {"messages": _turns(("system", "s"), ("assistant", "a"))}]
    )
    with caplog.at_level(logging.WARNING):
        chk = validate_mix(str(path), "sft", "w")
    assert chk.dropped == 1 and chk.rows == 1
    assert any("dropped 1 of 2 sft rows with problems; first: " in r.getMessage() for r in caplog.records)
    bad = _write_jsonl(tmp_path / "t.jsonl", [{"messages": _turns(("user", "q"), ("assistant", ""))}] * 2)
    with pytest.raises(
        DataError,
        match=r"^w: .*t\.jsonl: all 2 rows are unusable; first: .*line 1: messages\[1\]\.content is empty$",
    ):
        validate_mix(str(bad), "sft", "w")


def test_amount_selecting_nothing(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [sft(i) for i in range(3)])
    with pytest.raises(DataError, match=r"^w: .*mix\.yaml sources\[0\]\.amount: 0\.1 selects 0 of 3 rows$"):
        validate_mix(str(_mix(tmp_path, [{"path": "a.jsonl", "amount": 0.1}])), "sft", "w")


def test_sample_mixes_validate(repo_root):
    for name, kind, n in [
        ("tiny_sft", "sft", 6000),
        ("tiny_preference", "preference", 2000),
        ("tiny_rlvr", "rlvr", 2000),
    ]:
        chk = validate_mix(str(repo_root / "data_mixes" / f"{name}.yaml"), kind, name)
        assert chk.rows == n and chk.dropped == 0
    hub = validate_mix(str(repo_root / "data_mixes" / "tulu3_sft.yaml"), "sft", "x")  # nothing downloaded
    assert (hub.rows, hub.amounts[0].how) == (939343, "num_rows hint")


def test_a_label_check_that_refuses_the_verifier_name_names_the_line(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [rlvr(0), rlvr(1, dataset="gsm9k")])

    def check(dataset, ground_truth):
        if dataset != "gsm8k":
            raise ValueError(f"no reward named '{dataset}' (did you mean 'gsm8k'?)")
        return None

    with pytest.raises(DataError) as err:
        validate_mix(str(path), "rlvr", "w", label_check=check)
    assert (
        str(err.value)
        == f"w: {path} line 2: dataset 'gsm9k': no reward named 'gsm9k' (did you mean 'gsm8k'?)"
    )
