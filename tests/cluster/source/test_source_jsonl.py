"""read_shard() on JSON lines: line-level problems, gzip, bounded reading, and a property test."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_helpers import jsonl_bytes, read_all, shard_of, write_jsonl

from cluster.settings import SourceConfig
from cluster.source import ShardError, read_shard
from cluster.source import jsonl as jsonl_module
from cluster.source import readers as readers_module


def cfg(**kw: object) -> SourceConfig:
    return SourceConfig(uri="unused", **kw)  # type: ignore[arg-type]


def test_rows_ids_and_metadata(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"id": "a", "text": "héllo", "lang": "de", "n": 1},
        {"id": 7, "text": "int id", "lang": "en", "n": 2},
        {"id": 3.0, "text": "float id", "n": 3},
        {"id": True, "text": "bool id", "lang": None, "n": 4},
    ])
    table = pa.concat_tables(read_shard(shard_of(path), cfg(metadata_columns=["lang", "n"])))
    assert table.column_names == ["doc_id", "text", "lang", "n", "_shard", "_row", "error"]
    # integers become their decimal string; floats and booleans are not exact ids: rejected
    assert table.column("doc_id").to_pylist() == ["a", "7", None, None]
    assert table.column("lang").to_pylist() == ["de", "en", None, None]
    assert table.column("n").type == pa.int64() and table.column("n").to_pylist() == [1, 2, 3, 4]
    assert table.column("_row").to_pylist() == [0, 1, 2, 3]
    errors = table.column("error").to_pylist()
    assert errors[:2] == [None, None]
    assert errors[2].startswith("id is a floating-point number (3.0); floats are not exact ids")
    assert errors[3] == "id is a boolean (True); write ids as strings or integers"
    assert table.schema.metadata[b"id_kinds"] == b"integer,string"


def test_row_problems(tmp_path: Path) -> None:
    lines = [
        {"id": "ok", "text": "fine"},                       # 0
        {"id": "n", "text": None},                          # 1
        {"id": "e", "text": ""},                            # 2
        {"id": "w", "text": " \t\n "},                       # 3
        {"id": "i", "text": 42},                            # 4
        {"id": "l", "text": ["a"]},                         # 5
        {"id": None, "text": "x"},                          # 6
        {"id": "", "text": "x"},                            # 7
        {"text": "no id"},                                  # 8
        {"id": "nt"},                                       # 9
        {"id": {"a": 1}, "text": "x"},                      # 10
        b"{not json",                                       # 11
        b"[1, 2]",                                          # 12
        b'"just a string"',                                 # 13
        b'{"id": "u", "text": "bad \xff\xfe bytes"}',       # 14
        b'{"id": "s", "text": "lone \\ud800 surrogate"}',   # 15
        {"id": "m", "text": "x", "lang": {"x": 1}},         # 16
        {"id": "last", "text": "still read"},               # 17
    ]
    rows = by_row(read_all(shard_of(write_jsonl(tmp_path / "a.jsonl", lines)), cfg(metadata_columns=["lang"])))
    errors = {i: r["error"] for i, r in rows.items()}
    assert errors[0] is None and errors[17] is None
    assert errors[1] == "text is null"
    assert errors[2] == errors[3] == "empty text"
    assert errors[4] == "text is int, expected a string"
    assert errors[5] == "text is list, expected a string"
    assert errors[6] == "missing id: 'id' is null"
    assert errors[7] == "empty id: 'id' is empty"
    assert errors[8] == "missing id: no 'id' field"
    assert errors[9] == "missing text: no 'text' field"
    assert errors[10] == "id is dict, expected a string or integer"
    assert errors[11].startswith("line is not valid JSON")
    assert errors[12] == "line is not a JSON object (got list)"
    assert errors[13] == "line is not a JSON object (got str)"
    assert errors[14].startswith("line is not valid UTF-8")
    assert errors[15] == "text is not valid UTF-8"
    assert errors[16] == "metadata 'lang' is dict, expected a scalar (str, int, float, bool)"
    assert all(r["text"] is None for i, r in rows.items() if i not in (0, 17))
    assert rows[1]["doc_id"] == "n" and rows[11]["doc_id"] is None
    assert sorted(rows) == list(range(18))


def by_row(rows: list[dict]) -> dict[int, dict]:
    return {r["_row"]: r for r in rows}


def test_invalid_utf8_line_keeps_the_others(tmp_path: Path) -> None:
    data = (b'{"id": "1", "text": "one"}\n{"id": "2", "text": "tw\xc3\x28o"}\n'
            b'\xff\xff\xff\n{"id": "3", "text": "three"}\n')
    for name, payload in [("a.jsonl", data), ("a.jsonl.gz", gzip.compress(data))]:
        (tmp_path / name).write_bytes(payload)
        rows = read_all(shard_of(tmp_path / name), cfg())
        assert [(r["_row"], r["doc_id"], r["text"]) for r in rows] == [
            (0, "1", "one"), (1, None, None), (2, None, None), (3, "3", "three")]
        assert rows[1]["error"].startswith("line is not valid UTF-8")


def test_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    # BOM, CRLF, blank lines, no final newline
    path.write_bytes(b'\xef\xbb\xbf{"id": "1", "text": "one"}\r\n\r\n   \n{"id": "2", "text": "two"}')
    rows = read_all(shard_of(path), cfg())
    assert [(r["_row"], r["doc_id"], r["error"]) for r in rows] == [(0, "1", None), (3, "2", None)]


def test_long_line_is_a_row_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl_module, "MAX_LINE_BYTES", 100)
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": "x" * 5000}, {"id": "2", "text": "short"}])
    rows = read_all(shard_of(path), cfg())
    assert rows[0]["error"] == "line is longer than 100 bytes" and rows[0]["_row"] == 0
    assert (rows[1]["_row"], rows[1]["doc_id"], rows[1]["text"]) == (1, "2", "short")


def test_gzip_roundtrip_and_batches(tmp_path: Path) -> None:
    n = 1000
    path = write_jsonl(tmp_path / "a.jsonl.gz", [{"id": i, "text": f"doc {i}"} for i in range(n)], gz=True)
    tables = list(read_shard(shard_of(path), cfg(read_batch_rows=64)))
    assert all(0 < t.num_rows <= 64 for t in tables)
    table = pa.concat_tables(tables)
    assert table.column("doc_id").to_pylist() == [str(i) for i in range(n)]
    assert table.column("_row").to_pylist() == list(range(n))


def test_truncated_and_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress(jsonl_bytes([{"id": i, "text": f"document number {i} " * 20} for i in range(2000)]))
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(data[: len(data) // 2])
    rows_before_error = 0
    with pytest.raises(ShardError, match="unreadable gzip data") as info:
        for table in read_shard(shard_of(truncated), cfg(read_batch_rows=100)):
            rows_before_error += table.num_rows
    assert str(truncated) in str(info.value) and 0 < rows_before_error < 2000
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 3: len(corrupt) // 3 + 64] = b"\x00" * 64
    (tmp_path / "c.jsonl.gz").write_bytes(bytes(corrupt))
    with pytest.raises(ShardError, match="unreadable gzip data"):
        list(read_shard(shard_of(tmp_path / "c.jsonl.gz"), cfg()))


def test_gzip_format_mismatch(tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "a.jsonl.gz", [{"id": 1, "text": "x"}])  # named .gz, not compressed
    with pytest.raises(ShardError, match="not gzip data"):
        list(read_shard(shard_of(plain), cfg()))
    packed = write_jsonl(tmp_path / "b.data", [{"id": 1, "text": "x"}], gz=True)
    with pytest.raises(ShardError, match="gzip-compressed but read as plain jsonl"):
        list(read_shard(shard_of(packed, "jsonl"), cfg(format="jsonl")))


def test_missing_fields_fail_the_shard(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"doc": i, "body": "x"} for i in range(300)])
    with pytest.raises(ShardError) as info:
        list(read_shard(shard_of(path), cfg(read_batch_rows=7)))
    message = str(info.value)
    assert "source.id_column 'id'" in message and "source.text_column 'text'" in message
    assert "['body', 'doc']" in message and str(path) in message
    # one document without the field is only a row error, whatever the batch size
    path = write_jsonl(tmp_path / "b.jsonl", [{"id": 0}] + [{"id": i, "text": "x"} for i in range(1, 5)])
    rows = read_all(shard_of(path), cfg(read_batch_rows=1))
    assert [r["error"] for r in rows] == ["missing text: no 'text' field"] + [None] * 4


def test_metadata_type_stays_stable_across_batches(tmp_path: Path) -> None:
    lines = [{"id": i, "text": "x", "n": (i if i < 2 or i >= 4 else None), "mixed": [1, "a"][i % 2]} for i in range(6)]
    tables = list(read_shard(shard_of(write_jsonl(tmp_path / "a.jsonl", lines)),
                             cfg(metadata_columns=["n", "mixed"], read_batch_rows=2)))
    assert [t.schema.field("n").type for t in tables] == [pa.int64()] * 3
    assert pa.concat_tables(tables).column("n").to_pylist() == [0, 1, None, None, 4, 5]
    assert tables[0].column("mixed").to_pylist() == ["1", "a"]


def test_reading_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 40_000
    path = write_jsonl(tmp_path / "big.jsonl", [{"id": i, "text": f"document {i} " + "x" * 200} for i in range(n)])
    size = path.stat().st_size
    opened = []
    real_open = readers_module.open_shard

    def spy(shard, cfg):
        f = real_open(shard, cfg)
        opened.append(f)
        return f

    monkeypatch.setattr(readers_module, "open_shard", spy)
    batches = read_shard(shard_of(path), cfg(read_batch_rows=100))
    first = next(batches)
    assert first.num_rows == 100
    assert opened[0].tell() < size / 2, "the first batch must not need the whole file"
    assert sum(t.num_rows for t in batches) == n - 100


LINE = st.one_of(
    st.fixed_dictionaries({"id": st.one_of(st.integers(-10**6, 10**6), st.text(min_size=1, max_size=8)),
                           "text": st.one_of(st.none(), st.text(max_size=20), st.integers())}),
    st.sampled_from([b"", b"   ", b"{bad json", b"[1]", b"\xff\xfe", b"null"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE, max_size=60), batch=st.integers(1, 17), gz=st.booleans())
def test_every_row_exactly_once_in_order(lines: list, batch: int, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(Path(tmp) / ("p.jsonl.gz" if gz else "p.jsonl"), lines, gz=gz)
        tables = list(read_shard(shard_of(path), cfg(read_batch_rows=batch)))
    assert all(0 < t.num_rows <= batch for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    expected = [i for i, line in enumerate(lines) if not (isinstance(line, bytes) and not line.strip())]
    assert [r["_row"] for r in rows] == expected
    for r in rows:
        line = lines[r["_row"]]
        if isinstance(line, dict):
            assert r["doc_id"] == (str(line["id"]) if str(line["id"]).strip() else None)
            good = isinstance(line["text"], str) and line["text"].strip() and r["doc_id"] is not None
            assert (r["error"] is None) == bool(good)
            assert r["text"] == (line["text"] if good else None)
        else:
            assert r["error"] is not None and r["doc_id"] is None and r["text"] is None
