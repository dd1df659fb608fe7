"""Reading local data files, streamed, each row named by file and line (JSONL, JSON) or row
(parquet); a malformed file is a one-line `DataError` naming where. rows.py validates what these
yield; `decode_utf8` also guards the mix YAML."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def one_line(e: Any) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _utf8_error(path: Path, lineno: int, line: bytes, start: int) -> DataError:
    # `start` indexes the offending byte in `line`; the column is a byte column, 1-based.
    return DataError(
        f"{path} line {lineno}: not valid UTF-8 (byte 0x{line[start]:02x} at byte column {start + 1}); "
        f"save the file as UTF-8"
    )


def decode_utf8(data: bytes, path: str | Path) -> str:
    """`data` (a whole file) as text; bytes that are not UTF-8 are a DataError naming the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        lineno = data.count(b"\n", 0, e.start) + 1
        raise _utf8_error(Path(path), lineno, data[start : e.start + 1], e.start - start) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(location, row) for each non-blank line, read line by line (bytes, so a line that is not
    UTF-8 is reported as such, with its number)."""
    prefix = f"{path} line "
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, lineno, raw, e.start) from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path} line {lineno}: a row must be a JSON object, got {type(row).__name__}"
                )
            yield prefix + str(lineno), row


_WS = re.compile(r"[ \t\n\r]*")


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Rows of a .json file named by the line each starts on: a list of objects (`[{...}, ...]`),
    or objects one after another (JSON lines saved as .json) -- what `datasets` reads from it."""
    text = decode_utf8(path.read_bytes(), path)
    decoder = json.JSONDecoder()
    n = len(text)
    i = _WS.match(text, 0).end()
    in_list = text.startswith("[", i)
    lineno, counted = 1, 0

    def bad(pos: int, msg: str) -> DataError:
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return DataError(f"{path} line {line}: invalid JSON ({msg} at column {col})")

    if in_list:
        i = _WS.match(text, i + 1).end()
        if text.startswith("]", i):
            i = _WS.match(text, i + 1).end()
            in_list = False  # an empty list: only trailing data is left to check
    while i < n:
        try:
            row, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise bad(e.pos, e.msg) from None
        lineno += text.count("\n", counted, i)
        counted = i
        if not isinstance(row, dict):
            raise DataError(f"{path} line {lineno}: a row must be a JSON object, got {type(row).__name__}")
        yield f"{path} line {lineno}", row
        i = _WS.match(text, end).end()
        if not in_list:
            continue
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
        elif text.startswith("]", i):
            i = _WS.match(text, i + 1).end()
            in_list = False
            if i < n:
                raise bad(i, "Extra data")
        else:
            raise bad(i, "Expecting ',' delimiter")
    if in_list:
        raise bad(n, "Expecting ']'")


def parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a data problem, one line
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {one_line(e)})") from None


def _parquet_rows(path: Path, batch_size: int = 1000) -> Iterator[tuple[str, dict]]:
    """Rows of a parquet file, read a batch at a time, named by their 0-based index."""
    pf = parquet_file(path)
    j = 0
    batches = pf.iter_batches(batch_size=batch_size)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"{path} row {j}: parquet data could not be read ({type(e).__name__}: {one_line(e)})"
            ) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield f"{path} row {j}", row
            j += 1


def local_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(location, raw row) for every row of a local data file, streamed; a malformed file is a
    one-line DataError naming the file and line (JSONL, JSON) or row (parquet)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return _jsonl_rows(path)
    if path.suffix == ".json":
        return _json_rows(path)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(FILE_SUFFIXES)})")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
