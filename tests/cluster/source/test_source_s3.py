"""End to end on a real S3 endpoint (moto server): upload shards with s3fs, list them, read every row back."""

from __future__ import annotations

import gzip
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from source_helpers import jsonl_bytes, read_source

from cluster.settings import SourceConfig
from cluster.source import ShardError, list_shards, read_shard

pytestmark = pytest.mark.integration


def parquet_bytes(table: pa.Table, **kw: object) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def test_list_and_read_every_format(s3_server: dict[str, object], s3_bucket: str, s3fs_client) -> None:
    b = s3_bucket
    docs = [{"id": i, "text": f"document {i} — текст", "lang": ["en", "ru"][i % 2]} for i in range(30)]
    s3fs_client.pipe({
        f"{b}/docs/part-0.parquet": parquet_bytes(pa.Table.from_pylist(docs[:10]), row_group_size=4),
        f"{b}/docs/part-1.jsonl": jsonl_bytes(docs[10:20]),
        f"{b}/docs/sub/part-2.jsonl.gz": gzip.compress(jsonl_bytes(docs[20:])),
        f"{b}/docs/_SUCCESS": b"",
    })
    cfg = SourceConfig(uri=f"s3://{b}/docs", storage_options=s3_server, metadata_columns=["lang"], read_batch_rows=3)
    shards = list_shards(cfg)
    assert [(s.name, s.format) for s in shards] == [
        ("part-0.parquet", "parquet"), ("part-1.jsonl", "jsonl"), ("part-2.jsonl.gz", "jsonl.gz")]
    for shard in shards:
        assert all(t.num_rows <= 3 for t in read_shard(shard, cfg))
    rows = read_source(cfg)
    assert [r["doc_id"] for r in rows] == [str(i) for i in range(30)]
    assert [r["text"] for r in rows] == [d["text"] for d in docs]
    assert [r["lang"] for r in rows] == [d["lang"] for d in docs]
    assert [r["_row"] for r in rows] == list(range(10)) * 3
    assert [r["_shard"] for r in rows][::10] == [s.path for s in shards]
    assert all(r["error"] is None for r in rows)


def test_s3_shard_errors(s3_server: dict[str, object], s3_bucket: str, s3fs_client) -> None:
    b = s3_bucket
    whole = parquet_bytes(pa.table({"id": list(range(200)), "text": ["x" * 20] * 200}))
    s3fs_client.pipe({f"{b}/bad/cut.parquet": whole[: len(whole) // 2], f"{b}/bad/empty.jsonl": b""})
    cfg = SourceConfig(uri=f"s3://{b}/bad", storage_options=s3_server)
    cut, empty = list_shards(cfg)
    with pytest.raises(ShardError, match="corrupt or truncated") as info:
        list(read_shard(cut, cfg))
    assert info.value.shard == f"s3://{b}/bad/cut.parquet"
    with pytest.raises(ShardError, match="empty file"):
        list(read_shard(empty, cfg))
    s3fs_client.rm(f"{b}/bad/cut.parquet")
    with pytest.raises(ShardError, match="no longer exists"):
        list(read_shard(cut, cfg))


def test_object_replaced_after_listing_is_read_whole(s3_server: dict[str, object], s3_bucket: str,
                                                     s3fs_client) -> None:
    key = f"{s3_bucket}/docs/a.jsonl"
    s3fs_client.pipe(key, jsonl_bytes([{"id": 0, "text": "x"}]))
    cfg = SourceConfig(uri=f"s3://{s3_bucket}/docs", storage_options=s3_server)
    (shard,) = list_shards(cfg)
    s3fs_client.pipe(key, jsonl_bytes([{"id": i, "text": f"longer text {i}"} for i in range(50)]))
    rows = [r for t in read_shard(shard, cfg) for r in t.to_pylist()]
    assert [r["doc_id"] for r in rows] == [str(i) for i in range(50)]
