"""Writing embedded batches: counts, upsert semantics, request splitting, error rows, retries."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pyarrow as pa
import pytest
from pymilvus import MilvusException

from cluster.milvus.errors import MilvusWriteError
from cluster.milvus.payload import EMPTY_SPARSE_VALUE, sparse_column, with_empty_placeholder
from cluster.milvus.schema import CollectionSpec, ensure_collection
from cluster.milvus.writer import MilvusWriter, is_transient, split_requests
from cluster.settings import MilvusConfig

META = {"lang": pa.string(), "year": pa.int64()}


def setup(client, cfg: MilvusConfig, **spec_kw: object) -> tuple[CollectionSpec, MilvusWriter]:
    kw: dict[str, object] = {"dense_dim": 16, "has_sparse": True, "metadata": dict(META)}
    kw.update(spec_kw)
    spec = CollectionSpec.from_config(cfg, **kw)  # type: ignore[arg-type]
    ensure_collection(client, spec)
    return spec, MilvusWriter(client, spec, cfg)


def count(client, name: str = "docs") -> int:
    res = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    return int(res[0]["count(*)"])


def get(client, pks: list[str], fields: list[str]) -> dict[str, dict]:
    rows = client.get("docs", ids=pks, output_fields=fields)
    return {r["pk"]: r for r in rows}


def test_write_counts_and_values(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    _, writer = setup(lite_client, lite_cfg)
    batch = make_batch(40)
    lang = batch.column("lang").to_pylist()
    lang[8] = None  # metadata fields are nullable
    batch = batch.set_column(batch.schema.get_field_index("lang"), "lang", pa.array(lang))
    assert writer.write(batch) == 40
    writer.flush()
    assert count(lite_client) == 40
    row = get(lite_client, ["d7#1"], ["doc_id", "chunk_index", "text", "dense", "sparse", "lang", "year"])["d7#1"]
    assert (row["doc_id"], row["chunk_index"], row["text"], row["lang"], row["year"]) == ("d7", 1, "chunk 7 text",
                                                                                        "de", 2007)
    np.testing.assert_allclose(row["dense"], batch.column("dense")[7].as_py(), rtol=1e-6)
    want = dict(zip(batch.column("sparse_indices")[7].as_py(), batch.column("sparse_values")[7].as_py()))
    assert set(row["sparse"]) == set(want)
    np.testing.assert_allclose([row["sparse"][k] for k in sorted(want)], [want[k] for k in sorted(want)], rtol=1e-6)
    assert get(lite_client, ["d8#2"], ["lang", "year"])["d8#2"]["lang"] is None


def test_upsert_twice_keeps_count_and_updates(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    _, writer = setup(lite_client, lite_cfg)
    writer.write(make_batch(30, seed=1))
    again = make_batch(30, seed=2, text=lambda i: f"new {i}")
    writer.write(again)
    writer.flush()
    assert count(lite_client) == 30
    row = get(lite_client, ["d3#0"], ["text", "dense"])["d3#0"]
    assert row["text"] == "new 3"
    np.testing.assert_allclose(row["dense"], again.column("dense")[3].as_py(), rtol=1e-6)


def test_write_is_split_by_rows_and_by_bytes(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    cfg = dataclasses.replace(lite_cfg, write_batch_rows=7)
    spec, writer = setup(lite_client, cfg)
    assert writer.write(make_batch(50)) == 50
    assert writer.requests == 8  # ceil(50 / 7)
    small = MilvusWriter(lite_client, spec, dataclasses.replace(cfg, write_batch_rows=1000, max_request_bytes=600))
    assert small.write(make_batch(20, start=100)) == 20
    assert small.requests >= 10  # one row is ~64 + 16*4 + text + sparse bytes: 2 rows per request at most
    writer.flush()
    assert count(lite_client) == 70


def test_split_requests() -> None:
    sizes = np.array([10, 10, 10, 50, 10, 10])
    assert split_requests(sizes, max_rows=2, max_bytes=1000) == [(0, 2), (2, 4), (4, 6)]
    assert split_requests(sizes, max_rows=100, max_bytes=30) == [(0, 3), (3, 4), (4, 6)]  # 50 > 30 goes alone
    assert split_requests(np.array([], dtype=np.int64), 10, 10) == []


def test_rows_with_error_are_skipped(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    _, writer = setup(lite_client, lite_cfg)
    batch = make_batch(10, errors={2: "too long", 5: "bad utf-8"})
    # an error row may have no vectors at all
    dense = batch.column("dense").to_pylist()
    dense[2] = None
    batch = batch.set_column(batch.schema.get_field_index("dense"), "dense", pa.array(dense, pa.list_(pa.float32())))
    assert writer.write(batch) == 8
    assert writer.write(make_batch(3, errors={0: "x", 1: "y", 2: "z"})) == 0
    writer.flush()
    assert count(lite_client) == 8
    assert set(get(lite_client, ["d2#2", "d5#2", "d4#1"], ["doc_id"])) == {"d4#1"}


def test_fixed_size_list_dense_without_text_or_sparse(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    cfg = dataclasses.replace(lite_cfg, store_text=False)
    _, writer = setup(lite_client, cfg, has_sparse=False, metadata={})
    batch = make_batch(12, fixed_size=True, sparse=False, metadata=False).drop_columns(["text"])
    assert writer.write(batch) == 12
    writer.flush()
    assert count(lite_client) == 12


def test_long_text_is_cut_on_a_character_boundary(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    cfg = dataclasses.replace(lite_cfg, text_max_length=10)
    _, writer = setup(lite_client, cfg)
    writer.write(make_batch(3, text=lambda i: "äöü" * 10 if i == 1 else "ok"))
    writer.flush()
    rows = get(lite_client, ["d0#0", "d1#1"], ["text"])
    assert rows["d1#1"]["text"] == "äöüäö" and rows["d0#0"]["text"] == "ok"  # 10 bytes of 2-byte chars


def test_empty_sparse_gets_a_placeholder(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    _, writer = setup(lite_client, lite_cfg)
    batch = make_batch(4)
    idx, val = batch.column("sparse_indices").to_pylist(), batch.column("sparse_values").to_pylist()
    idx[1], val[1], idx[2], val[2] = [], [], None, None
    batch = batch.set_column(batch.schema.get_field_index("sparse_indices"), "sparse_indices",
                             pa.array(idx, pa.list_(pa.int32())))
    batch = batch.set_column(batch.schema.get_field_index("sparse_values"), "sparse_values",
                             pa.array(val, pa.list_(pa.float32())))
    assert writer.write(batch) == 4
    sparse = with_empty_placeholder(sparse_column(batch))
    assert sparse.nnz.tolist()[1:3] == [1, 1] and sparse.indices[sparse.offsets[1]] == 0
    row = get(lite_client, ["d1#1"], ["sparse"])["d1#1"]
    assert list(row["sparse"]) == [0] and row["sparse"][0] == pytest.approx(EMPTY_SPARSE_VALUE, rel=1e-3)


def test_bad_input_is_refused_before_writing(lite_client, lite_cfg: MilvusConfig, make_batch) -> None:
    _, writer = setup(lite_client, lite_cfg)
    with pytest.raises(KeyError, match="sparse_indices"):
        writer.write(make_batch(3, sparse=False))
    with pytest.raises(ValueError, match="'d0#0' has a dense vector of 8 dims, the collection has 16"):
        writer.write(make_batch(3, dim=8))
    long_id = make_batch(2).set_column(1, "doc_id", pa.array(["x" * 600, "d1"]))
    with pytest.raises(ValueError, match="600 bytes, Milvus keeps at most 512"):
        writer.write(long_id)
    assert count(lite_client) == 0


class FlakyClient:
    """Fails the first ``failures`` upserts with ``error``; records the rows it accepts."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.rows = failures, error, []

    def upsert(self, collection: str, rows: list[dict], timeout: float | None = None) -> dict:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.rows.extend(rows)
        return {"upsert_count": len(rows)}


def unavailable() -> MilvusException:
    return MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:1, server unavailable")


def test_transient_errors_are_retried_with_backoff(lite_cfg: MilvusConfig, make_batch) -> None:
    spec = CollectionSpec(name="docs", dense_dim=16, has_sparse=True, metadata=dict(META))
    sleeps: list[float] = []
    client = FlakyClient(4, unavailable())
    writer = MilvusWriter(client, spec, lite_cfg, attempts=6, initial_delay=0.5, max_delay=3.0, sleep=sleeps.append)
    assert writer.write(make_batch(5)) == 5
    assert sleeps == [0.5, 1.0, 2.0, 3.0] and writer.retries == 4 and len(client.rows) == 5

    client = FlakyClient(10, unavailable())
    writer = MilvusWriter(client, spec, lite_cfg, attempts=3, sleep=sleeps.append)
    with pytest.raises(MilvusWriteError, match="still failed after 3 attempts.*re-run safely") as info:
        writer.write(make_batch(5))
    assert isinstance(info.value.__cause__, MilvusException)


def test_permanent_errors_are_not_retried(lite_cfg: MilvusConfig, make_batch) -> None:
    spec = CollectionSpec(name="docs", dense_dim=16, has_sparse=True, metadata=dict(META))
    sleeps: list[float] = []
    bad = MilvusException(code=1100, message="VARCHAR field 'lang' value length 11 exceeds max_length=10")
    writer = MilvusWriter(FlakyClient(1, bad), spec, lite_cfg, sleep=sleeps.append)
    with pytest.raises(MilvusWriteError, match="not transient") as info:
        writer.write(make_batch(5))
    assert info.value.__cause__ is bad and sleeps == []


def test_is_transient() -> None:
    class Rpc(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

    assert is_transient(unavailable())
    assert is_transient(Rpc(grpc.StatusCode.UNAVAILABLE))
    assert not is_transient(Rpc(grpc.StatusCode.INVALID_ARGUMENT))
    assert is_transient(MilvusException(code=grpc.StatusCode.DEADLINE_EXCEEDED, message="Retry timeout: 10s"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(MilvusException(code=100, message="collection not found[collection=docs]"))
    assert not is_transient(ValueError("bad"))
