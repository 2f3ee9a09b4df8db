"""read_shard(): parquet and JSON lines streamed in bounded batches, row and shard problems reported."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from source_helpers import read_all, shard_of, write_jsonl, write_parquet

from cluster import contract
from cluster.settings import SourceConfig
from cluster.source import ShardError, read_shard
from cluster.source import readers as readers_module


def cfg(uri: str = "unused", **kw: object) -> SourceConfig:
    return SourceConfig(uri=uri, **kw)  # type: ignore[arg-type]


def by_row(rows: list[dict]) -> dict[int, dict]:
    return {r["_row"]: r for r in rows}


# ---------------------------------------------------------------- parquet


def test_parquet_rows_ids_and_metadata_types(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", {
        "id": pa.array([10, 11, 12], pa.int64()), "text": ["héllo", "wörld", "третий"],
        "lang": ["de", "de", "ru"], "year": pa.array([2001, 2002, None], pa.int32()),
        "score": [0.5, 1.5, 2.5], "ok": [True, False, True], "unused": ["x", "y", "z"]})
    tables = list(read_shard(shard_of(path), cfg(metadata_columns=["lang", "year", "score", "ok"])))
    table = pa.concat_tables(tables)
    assert table.column_names == ["doc_id", "text", "lang", "year", "score", "ok", "_shard", "_row", "error"]
    assert table.schema.field("doc_id").type == pa.string() and table.schema.field("_row").type == pa.int64()
    assert table.schema.field("year").type == pa.int32() and table.schema.field("ok").type == pa.bool_()
    assert table.column("doc_id").to_pylist() == ["10", "11", "12"]
    assert table.column("text").to_pylist() == ["héllo", "wörld", "третий"]
    assert table.column("year").to_pylist() == [2001, 2002, None]
    assert table.column("_shard").to_pylist() == [str(path)] * 3
    assert table.column("_row").to_pylist() == [0, 1, 2]
    assert table.column("error").to_pylist() == [None] * 3
    assert set(contract.READ_COLUMNS) <= set(table.column_names)


def test_parquet_reads_only_needed_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_parquet(tmp_path / "p.parquet", {"id": ["a"], "text": ["t"], "big": ["x" * 1000], "m": [1]})
    seen: list[object] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kw):
        seen.append(kw.get("columns"))
        return real(self, *args, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    read_all(shard_of(path), cfg(metadata_columns=["m"]))
    assert seen == [["id", "text", "m"]]


def test_parquet_batches_are_bounded(tmp_path: Path) -> None:
    n = 1000
    path = write_parquet(tmp_path / "p.parquet", {"id": list(range(n)), "text": [f"t{i}" for i in range(n)]},
                         row_group_size=300)
    tables = list(read_shard(shard_of(path), cfg(read_batch_rows=128)))
    assert all(0 < t.num_rows <= 128 for t in tables) and len(tables) >= 8
    rows = pa.concat_tables(tables).column("_row").to_pylist()
    assert rows == list(range(n))


def test_parquet_row_problems(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", {
        "id": ["a", None, "", "d", "e", "f", " "],
        "text": ["fine", "x", "x", None, "", " \n\t ", None]})
    rows = read_all(shard_of(path), cfg())
    assert [r["error"] for r in rows] == [
        None, "missing id: 'id' is null", "empty id: 'id' is empty", "text is null", "empty text", "empty text",
        "empty id: 'id' is empty; text is null"]
    assert [r["text"] for r in rows] == ["fine"] + [None] * 6
    assert [r["doc_id"] for r in rows] == ["a", None, None, "d", "e", "f", None]


def test_parquet_non_string_text(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", {"id": ["a", "b"], "text": [1, None]})
    assert [r["error"] for r in read_all(shard_of(path), cfg())] == ["text is int, expected a string", "text is null"]
    path = write_parquet(tmp_path / "b.parquet", {"id": ["a", "b"], "text": pa.array([b"ok", b"\xff\xfe"])})
    rows = read_all(shard_of(path), cfg())
    assert [(r["text"], r["error"]) for r in rows] == [("ok", None), (None, "text is not valid UTF-8")]


def test_parquet_missing_columns_name_those_present(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", {"doc": ["a"], "body": ["t"]})
    with pytest.raises(ShardError) as info:
        list(read_shard(shard_of(path), cfg()))
    message = str(info.value)
    assert str(path) in message and "source.id_column 'id'" in message and "source.text_column 'text'" in message
    assert "['doc', 'body']" in message
    with pytest.raises(ShardError, match="source.metadata_columns 'lang'"):
        list(read_shard(shard_of(path), cfg(id_column="doc", text_column="body", metadata_columns=["lang"])))


def test_parquet_nested_metadata_is_a_shard_error(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", {"id": ["a"], "text": ["t"], "tags": [["x", "y"]]})
    with pytest.raises(ShardError, match="not scalar"):
        list(read_shard(shard_of(path), cfg(metadata_columns=["tags"])))


def test_truncated_and_corrupt_parquet(tmp_path: Path) -> None:
    good = write_parquet(tmp_path / "good.parquet", {"id": list(range(500)), "text": ["t" * 50] * 500})
    data = good.read_bytes()
    for name, content in [("half.parquet", data[: len(data) // 2]), ("tail.parquet", data[:-3]),
                          ("junk.parquet", b"this is not parquet at all")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ShardError, match="corrupt or truncated") as info:
            list(read_shard(shard_of(path), cfg()))
        assert info.value.shard == str(path) and not info.value.transient
        assert info.value.__cause__ is not None


def test_corrupt_parquet_pages(tmp_path: Path) -> None:
    n = 2000
    good = write_parquet(tmp_path / "good.parquet", {"id": list(range(n)), "text": [f"text {i}" for i in range(n)]})
    data = bytearray(good.read_bytes())
    for i in range(8, len(data) // 2):  # damage the column data, keep the footer
        data[i] = 0xFF
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="corrupt"):
        list(read_shard(shard_of(bad), cfg()))


@pytest.mark.parametrize("name", ["empty.parquet", "empty.jsonl", "empty.jsonl.gz"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(ShardError, match=r"empty file \(0 bytes\)") as info:
        list(read_shard(shard_of(path), cfg()))
    assert str(path) in str(info.value)


def test_file_removed_after_listing(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "x"}])
    shard = shard_of(path)
    path.unlink()
    with pytest.raises(ShardError, match="no longer exists"):
        list(read_shard(shard, cfg()))


def test_shard_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ShardError("s3://b/x.parquet", "broken", transient=True)))
    assert str(err) == "shard s3://b/x.parquet: broken" and err.transient and err.reason == "broken"


def test_invalid_settings_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "x"}])
    with pytest.raises(ValueError, match="read_batch_rows"):
        list(read_shard(shard_of(path), cfg(read_batch_rows=0)))
    with pytest.raises(ValueError, match="clash"):
        list(read_shard(shard_of(path), cfg(metadata_columns=["error"])))


class Flaky(io.RawIOBase):
    """A file that serves ``ok_bytes`` bytes, then fails like a dropped connection."""

    def __init__(self, data: bytes, ok_bytes: int) -> None:
        self.inner = io.BytesIO(data)
        self.ok_bytes = ok_bytes

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.inner.seek(pos, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def readinto(self, b) -> int:  # type: ignore[override]
        if self.inner.tell() >= self.ok_bytes:
            raise ConnectionResetError("connection reset by peer")
        n = min(len(b), self.ok_bytes - self.inner.tell())
        data = self.inner.read(n)
        b[: len(data)] = data
        return len(data)


@pytest.mark.parametrize("name", ["a.jsonl", "a.parquet"])
def test_transient_read_failure_is_flagged(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": i, "text": f"text {i} " * 30} for i in range(3000)]
    if name.endswith(".parquet"):
        path = write_parquet(tmp_path / name, {"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})
    else:
        path = write_jsonl(tmp_path / name, rows)
    data = path.read_bytes()
    monkeypatch.setattr(readers_module, "open_shard", lambda shard, cfg: Flaky(data, 5000))
    with pytest.raises(ShardError, match="may pass on retry") as info:
        list(read_shard(shard_of(path), cfg(read_batch_rows=10)))
    assert info.value.transient


def test_rows_held_for_the_field_probe_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.source import jsonl as jsonl_module

    monkeypatch.setattr(jsonl_module, "PROBE_LINES", 50)
    path = write_jsonl(tmp_path / "a.jsonl", [b"not json"] * 5000)  # no JSON object at all
    data = path.read_bytes()
    monkeypatch.setattr(readers_module, "open_shard", lambda shard, cfg: Flaky(data, len(data) // 2))
    received = 0
    with pytest.raises(ShardError, match="may pass on retry"):
        for table in read_shard(shard_of(path), cfg(read_batch_rows=10)):
            received += table.num_rows
    assert received > 0  # rows were released before the read failed, not held until the end
