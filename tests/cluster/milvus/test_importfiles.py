"""Import files: the parquet Milvus imports, read back from S3 (moto) and local folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cluster.milvus import importfiles as IF
from cluster.milvus.importfiles import ImportFiles, delete_files, import_schema, import_table
from cluster.milvus.payload import EMPTY_SPARSE_INDEX, EMPTY_SPARSE_VALUE
from cluster.milvus.schema import CollectionSpec
from embedder.storage import filesystem

META = {"lang": pa.string(), "year": pa.int64(), "score": pa.float64(), "ok": pa.bool_()}


def spec_for(**kw: object) -> CollectionSpec:
    opts: dict[str, object] = {"name": "docs", "dense_dim": 16, "has_sparse": True, "metadata": META}
    opts.update(kw)
    return CollectionSpec(**opts)  # type: ignore[arg-type]


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, values)
    return table.append_column(name, values)


def full_batch(make_batch, n: int, *, start: int = 0, seed: int = 0, **kw: object) -> pa.Table:
    """An embed-stage batch with every metadata type, some nulls, one empty sparse row and non-ASCII text."""
    batch = make_batch(n, start=start, seed=seed, text=lambda i: f"chunk {i} Grüße 東京 🚲", **kw)
    batch = batch.drop_columns(["error"])
    ids = range(start, start + n)
    batch = with_column(batch, "lang", pa.array([None if i % 5 == 0 else ("de" if i % 2 else "en") for i in ids]))
    batch = with_column(batch, "year", pa.array([None if i % 7 == 0 else 2000 + i for i in ids], pa.int64()))
    batch = with_column(batch, "score", pa.array([None if i % 4 == 0 else i / 8 for i in ids], pa.float32()))
    batch = with_column(batch, "ok", pa.array([None if i % 3 == 0 else bool(i % 2) for i in ids]))
    idx, val = batch.column("sparse_indices").to_pylist(), batch.column("sparse_values").to_pylist()
    idx[1], val[1] = [], []
    batch = with_column(batch, "sparse_indices", pa.array(idx, pa.list_(pa.int32())))
    return with_column(batch, "sparse_values", pa.array(val, pa.list_(pa.float32())))


def test_round_trip_of_every_field_type_through_s3(s3_server, s3_bucket, make_batch, tmp_path: Path) -> None:
    spec = spec_for()
    fs, root = filesystem(f"s3://{s3_bucket}/imports/run1", s3_server)
    files = ImportFiles(spec, fs, root, "w0", max_file_bytes=1 << 30, scratch_dir=str(tmp_path / "scratch"))
    first = full_batch(make_batch, 30)
    second = full_batch(make_batch, 20, start=30, seed=1, fixed_size=True)  # fixed_size_list dense in
    assert files.write(first, np.full(30, 4, np.int32)) == 30
    assert files.write(second, np.arange(20, dtype=np.int32) % 2) == 20
    out = files.close()

    assert len(out) == 1 and os.listdir(tmp_path / "scratch") == []
    f = out[0]
    assert f.uri == f"s3://{s3_bucket}/imports/run1/w0-00000.parquet"
    assert f.path == "imports/run1/w0-00000.parquet"
    assert f.rows == 50 and f.bytes == fs.size(f"{s3_bucket}/{f.path}")
    assert f.tag_rows == {4: 30, 0: 10, 1: 10}

    table = pq.read_table(f"{s3_bucket}/{f.path}", filesystem=fs)
    assert table.schema.equals(import_schema(spec))
    assert table.schema.names == ["pk", "doc_id", "chunk_index", "embed_fp", "text", "dense", "sparse", "lang", "year",
                                  "score", "ok"]
    assert set(table.column("embed_fp").to_pylist()) == {""}  # the batches carry no fingerprint: never skipped
    assert table.schema.field("dense").type == pa.list_(pa.float32())  # not fixed_size_list: Milvus reads LIST
    src = pa.concat_tables([first, second.set_column(second.schema.get_field_index("dense"), "dense",
                                                     second.column("dense").cast(pa.list_(pa.float32())))])
    assert table.column("pk").to_pylist() == src.column("pk").to_pylist()
    assert table.column("chunk_index").to_pylist() == src.column("chunk_index").to_pylist()
    assert table.column("text").to_pylist() == src.column("text").to_pylist()
    np.testing.assert_array_equal(np.array(table.column("dense").to_pylist(), np.float32),
                                  np.array(src.column("dense").to_pylist(), np.float32))
    for got, idx, val in zip(table.column("sparse").to_pylist(), src.column("sparse_indices").to_pylist(),
                             src.column("sparse_values").to_pylist()):
        parsed = json.loads(got)
        if not idx:  # Milvus refuses empty sparse rows: the placeholder weight
            assert parsed == {"indices": [EMPTY_SPARSE_INDEX], "values": [pytest.approx(EMPTY_SPARSE_VALUE)]}
            assert np.float32(parsed["values"][0]) == np.float32(EMPTY_SPARSE_VALUE)
            continue
        assert parsed["indices"] == idx
        # decimals of the float64: they parse back to exactly the float32 written
        np.testing.assert_array_equal(np.array(parsed["values"], np.float64).astype(np.float32),
                                      np.array(val, np.float32))
    assert table.column("lang").to_pylist() == src.column("lang").to_pylist()
    assert table.column("year").to_pylist() == src.column("year").to_pylist()
    assert table.column("score").to_pylist() == pc.cast(src.column("score"), pa.float64()).to_pylist()
    assert table.column("ok").to_pylist() == src.column("ok").to_pylist()
    assert None in table.column("lang").to_pylist() and None in table.column("ok").to_pylist()

    delete_files(fs, out)
    assert not fs.exists(f"{s3_bucket}/{f.path}")
    delete_files(fs, out)  # already gone: fine


def test_parts_roll_over_at_max_file_bytes(make_batch, tmp_path: Path) -> None:
    spec = spec_for(metadata={})
    fs, root = filesystem(str(tmp_path / "out"))
    limit = 45_000
    files = ImportFiles(spec, fs, root, "w1", max_file_bytes=limit, scratch_dir=str(tmp_path / "scratch"))
    big = make_batch(300, metadata=False).drop_columns(["error"])  # ~78 kB: one write over two parts
    small = make_batch(150, start=300, seed=1, metadata=False).drop_columns(["error"])
    files.write(big, np.zeros(300, np.int32))
    files.write(small, np.ones(150, np.int32))
    out = files.close()

    assert len(out) == 3, [f.rows for f in out]
    assert [Path(f.path).name for f in out] == [f"w1-{i:05d}.parquet" for i in range(3)]
    assert all(f.bytes == os.path.getsize(f.uri) and f.bytes <= limit for f in out)
    tables = [pq.read_table(f.uri) for f in out]
    assert [t.num_rows for t in tables] == [f.rows for f in out] and sum(f.rows for f in out) == 450
    assert pa.concat_tables(tables).column("pk").to_pylist() == (big.column("pk").to_pylist()
                                                                 + small.column("pk").to_pylist())
    assert out[0].tag_rows == {0: out[0].rows} and out[2].tag_rows == {1: out[2].rows}
    assert sum(f.tag_rows.get(0, 0) for f in out) == 300 and sum(f.tag_rows.get(1, 0) for f in out) == 150

    with pytest.raises(ValueError, match="16 GiB"):
        ImportFiles(spec, fs, root, "w2", max_file_bytes=IF.MAX_IMPORT_FILE_BYTES + 1, scratch_dir=str(tmp_path))


def test_drop_tags_rewrite_only_parts_that_hold_them(make_batch, tmp_path: Path, monkeypatch) -> None:
    spec = spec_for(metadata={}, has_sparse=False)
    fs, root = filesystem(str(tmp_path / "out"))
    files = ImportFiles(spec, fs, root, "w3", max_file_bytes=60_000, scratch_dir=str(tmp_path / "scratch"))
    a = make_batch(120, metadata=False, sparse=False).drop_columns(["error"])
    b = make_batch(120, start=120, metadata=False, sparse=False).drop_columns(["error"])
    files.write(a, np.where(np.arange(120) % 2 == 0, 0, 1).astype(np.int32))  # tags 0 and 1 interleaved
    files.write(b, np.full(120, 2, np.int32))
    rewrites: list[int] = []
    original = ImportFiles._rewrite
    monkeypatch.setattr(ImportFiles, "_rewrite", lambda self, part, keep: (rewrites.append(part.index),
                                                                           original(self, part, keep)))
    out = files.close(drop_tags=frozenset({1, 3}))

    kept = pa.concat_tables([pq.read_table(f.uri) for f in out])
    expected = [pk for i, pk in enumerate(a.column("pk").to_pylist()) if i % 2 == 0] + b.column("pk").to_pylist()
    assert kept.column("pk").to_pylist() == expected
    assert sum(f.rows for f in out) == 180
    parts_of_a = {i for i, f in enumerate(out) if 0 in f.tag_rows}
    assert rewrites and set(rewrites) <= parts_of_a  # parts holding only tag 2 were uploaded as written
    assert all(1 not in f.tag_rows for f in out)
    assert os.listdir(tmp_path / "scratch") == []
    assert files.close(drop_tags=frozenset({1})) == out  # closing again returns the same files

    only = ImportFiles(spec, fs, root, "w4", max_file_bytes=1 << 30, scratch_dir=str(tmp_path / "scratch"))
    only.write(a, np.full(120, 7, np.int32))
    assert only.close(drop_tags=frozenset({7})) == []  # a part left empty is not uploaded
    assert not any(n.startswith("w4-") for n in os.listdir(tmp_path / "out"))


def test_empty_batch_and_no_rows(make_batch, tmp_path: Path) -> None:
    spec = spec_for()
    fs, root = filesystem(str(tmp_path / "out"))
    files = ImportFiles(spec, fs, root, "w5", max_file_bytes=1 << 20, scratch_dir=str(tmp_path / "scratch"))
    empty = full_batch(make_batch, 4).slice(0, 0)
    assert files.write(empty, np.zeros(0, np.int32)) == 0
    assert files.close() == []
    assert not (tmp_path / "out").exists()
    assert import_table(empty, spec).schema.equals(import_schema(spec))
    with pytest.raises(RuntimeError, match="closed"):
        files.write(empty, np.zeros(0, np.int32))


def test_text_cut_on_a_character_boundary(make_batch) -> None:
    spec = spec_for(metadata={"title": pa.string()}, text_max_length=10)
    texts = {0: "short", 1: "ab€€€€", 2: "abcdefghi🚲", 3: "0123456789", 4: None}
    batch = make_batch(5, metadata=False, text=lambda i: texts[i]).drop_columns(["error"])
    batch = with_column(batch, "text", pa.array([texts[i] for i in range(5)], pa.large_string()))
    long_title = "é" * 40_000  # 80000 bytes > 65535
    batch = batch.append_column("title", pa.array([long_title, None, "t", "t", "t"]))
    table = import_table(batch, spec)
    assert table.column("text").to_pylist() == ["short", "ab€€", "abcdefghi", "0123456789", ""]
    assert all(len(t.encode()) <= 10 for t in table.column("text").to_pylist())
    title = table.column("title").to_pylist()
    assert title[0] == "é" * 32767 and len(title[0].encode()) == 65534 and title[1:] == [None, "t", "t", "t"]


@pytest.mark.parametrize("problem", ["error", "dim", "nan", "tags"])
def test_rows_milvus_would_refuse_are_refused(problem: str, make_batch, tmp_path: Path) -> None:
    spec = spec_for(metadata={})
    fs, root = filesystem(str(tmp_path / "out"))
    files = ImportFiles(spec, fs, root, "w6", max_file_bytes=1 << 20, scratch_dir=str(tmp_path / "scratch"))
    batch = make_batch(4, metadata=False, errors={2: "bad"} if problem == "error" else None)
    tags = np.zeros(4, np.int32)
    if problem == "error":
        match = "have an `error`"
    elif problem == "dim":
        batch, match = make_batch(4, dim=8, metadata=False), "8 dims"
    elif problem == "nan":
        dense = np.ones((4, 16), np.float32)
        dense[3, 5] = np.nan
        batch = with_column(batch, "dense", pa.array(list(dense), pa.list_(pa.float32())))
        match = "non-finite dense vector"
    else:
        tags, match = np.zeros(3, np.int32), "one tag per row"
    with pytest.raises(ValueError, match=match):
        files.write(batch, tags)
