"""Column-wise upsert requests (cluster.milvus.columns): byte for byte what pymilvus builds from rows.

No Milvus 2.6 server runs here, so what a server would receive is pinned down instead: the
serialized ``UpsertRequest`` built from the batch's columns must equal the one pymilvus'
``Prepare.row_upsert_param`` builds from ``to_rows`` of the same batch (the request a server has
always accepted from this job), for every dense type, with sparse vectors, text cut to its field's
bytes, ``embed_fp`` and nullable metadata; and on a milvus-lite server the bytes that reach the
gRPC stub are the same whichever path built them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pymilvus import DataType, MilvusClient, MilvusException
from pymilvus.client import entity_helper
from pymilvus.client.prepare import Prepare
from pymilvus.exceptions import ParamError, SchemaMismatchRetryableException

from cluster import contract as C
from cluster.milvus import columns
from cluster.milvus.payload import EMPTY_SPARSE_VALUE, to_rows
from cluster.milvus.schema import CollectionSpec, build_schema, ensure_collection
from cluster.milvus.strict import DUPLICATE_PK_CODE, CheckedClient, journal_counts
from cluster.milvus.writer import MilvusWriter
from cluster.settings import MilvusConfig

META = {"lang": pa.string(), "year": pa.int64(), "score": pa.float64(), "ok": pa.bool_()}
LONG = "Größenänderung über 20 Bytes: ✓✓✓ "  # multi-byte characters on the cut


def batch(make_batch: Callable[..., pa.Table], n: int = 12, *, dim: int = 16, sparse: bool = True,
          fixed_size: bool = False) -> pa.Table:
    """A batch with every kind of value the request must carry the same way as pymilvus does."""
    t = make_batch(n, dim=dim, sparse=sparse, fixed_size=fixed_size, text=lambda i: LONG * (i % 3) + f"chunk {i}")
    t = t.append_column(C.EMBED_FP, pa.array([None if i % 4 == 0 else f"{i:016x}/1/9" for i in range(n)]))
    lang = t.column("lang").to_pylist()
    lang[1] = None
    t = t.set_column(t.schema.get_field_index("lang"), "lang", pa.array(lang))
    t = t.append_column("score", pa.array([None if i == 2 else i / 3 for i in range(n)], pa.float64()))
    t = t.append_column("ok", pa.array([None if i == 3 else i % 2 == 0 for i in range(n)]))
    if sparse:  # an empty row (placeholder weight) and a row whose indices are not in order
        idx, val = t.column("sparse_indices").to_pylist(), t.column("sparse_values").to_pylist()
        idx[0], val[0] = [], []
        idx[n // 2], val[n // 2] = [900, 3, 77], [0.5, 0.25, 0.125]
        for name, values, kind in (("sparse_indices", idx, pa.int32()), ("sparse_values", val, pa.float32())):
            t = t.set_column(t.schema.get_field_index(name), name, pa.array(values, pa.list_(kind)))
    return t


def spec_of(dense_type: str = "float32", **kw: Any) -> CollectionSpec:
    args: dict[str, Any] = {"name": "docs", "dense_dim": 16, "has_sparse": True, "text_max_length": 20,
                            "metadata": dict(META), "dense_type": dense_type,
                            "int8_scale": 300.0 if dense_type == "int8" else None}
    args.update(kw)
    return CollectionSpec(**args)


def pymilvus_request(table: pa.Table, spec: CollectionSpec, schema: dict[str, Any], stamp: int) -> bytes:
    return Prepare.row_upsert_param(spec.name, to_rows(table, spec), "", schema["fields"],
                                    schema.get("struct_array_fields", []), enable_dynamic=False,
                                    schema_timestamp=stamp).SerializeToString()


@pytest.mark.parametrize("dense_type", ["float32", "float16", "bfloat16", "int8", "binary"])
def test_the_request_is_pymilvus_own_for_each_dense_type(make_batch, dense_type: str) -> None:
    spec = spec_of(dense_type)
    schema = build_schema(spec).to_dict()
    table = batch(make_batch)
    assert columns.columnar(schema, spec)
    request = columns.build_request(table, spec, schema, schema_timestamp=463_000_000_000_000_001)
    assert request.SerializeToString() == pymilvus_request(table, spec, schema, 463_000_000_000_000_001)
    fields = {f.field_name: f for f in request.fields_data}
    assert [f.field_name for f in request.fields_data] == spec.field_names and request.num_rows == 12
    text = list(fields[C.TEXT].scalars.string_data.data)
    assert max(len(t.encode()) for t in text) <= 20 and text[3] == "chunk 3"  # cut on a character boundary
    assert list(fields[C.EMBED_FP].scalars.string_data.data)[:2] == ["", f"{1:016x}/1/9"]
    lang = fields["lang"]
    assert list(lang.valid_data)[:3] == [True, False, True] and len(lang.scalars.string_data.data) == 11
    sparse = fields["sparse"].vectors.sparse_float_vector.contents
    assert sparse[0] == np.array([(0, EMPTY_SPARSE_VALUE)], columns._SPARSE_PAIR).tobytes()
    assert np.frombuffer(sparse[6], columns._SPARSE_PAIR)["index"].tolist() == [3, 77, 900]  # sorted, as pymilvus


@pytest.mark.parametrize(("sparse", "store_text", "fingerprints", "fixed_size"), [
    (False, True, True, False), (False, False, False, True), (True, True, False, True)])
def test_dense_only_and_older_collections_too(make_batch, sparse: bool, store_text: bool, fingerprints: bool,
                                              fixed_size: bool) -> None:
    spec = spec_of(has_sparse=sparse, store_text=store_text, fingerprints=fingerprints, metadata={})
    schema = build_schema(spec).to_dict()
    table = batch(make_batch, 7, sparse=sparse, fixed_size=fixed_size)
    assert columns.build_request(table, spec, schema).SerializeToString() == pymilvus_request(table, spec, schema, 0)


def test_bge_m3_size_rows(make_batch) -> None:
    """1024 dims, ~100 weights, ~1 kB of text (the rows the benchmark measures)."""
    from benchmarks.sink import make_block

    table = make_block(3, 50)
    spec = CollectionSpec(name="docs", dense_dim=1024, has_sparse=True)
    schema = build_schema(spec).to_dict()
    assert columns.build_request(table, spec, schema).SerializeToString() == pymilvus_request(table, spec, schema, 0)


@pytest.mark.parametrize(("column", "value", "message"), [
    (C.EMBED_FP, "f" * 65, "length of string exceeds max length. length: 65, max length: 64"),
    ("sparse_values", float("nan"), "sparse vector value must not be NaN"),
    ("sparse_indices", 2**32 - 1, "less than 2^32-1: 4294967295"),
])
def test_values_pymilvus_refuses_are_refused_alike(make_batch, column: str, value: Any, message: str) -> None:
    spec = spec_of(metadata={})
    schema = build_schema(spec).to_dict()
    table = batch(make_batch, 4)
    if column == C.EMBED_FP:
        table = table.set_column(table.schema.get_field_index(column), column, pa.array([value] * 4))
    else:
        kind = pa.int64() if column == "sparse_indices" else pa.float32()
        rows = table.column(column).to_pylist()
        rows[2] = rows[2][:-1] + [value]
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(rows, pa.list_(kind)))
    with pytest.raises(ParamError, match=message.replace("^", r"\^")) as ours:
        columns.build_request(table, spec, schema)
    with pytest.raises(ParamError) as theirs:
        if column == C.EMBED_FP:
            # pymilvus' row path means to check this but walks the characters of the one string it is
            # given (each is 1 long) and sends the request, which a server then refuses; its column path
            # checks the strings, with this message
            pymilvus_request(table, spec, schema, 0)
            field = next(f for f in schema["fields"] if f["name"] == C.EMBED_FP)
            entity_helper.convert_to_str_array([value], field)
        else:
            pymilvus_request(table, spec, schema, 0)
    assert ours.value.message == theirs.value.message


def test_collections_it_does_not_know_are_written_as_rows() -> None:
    spec = spec_of(metadata={})
    schema = build_schema(spec).to_dict()
    assert columns.columnar(schema, spec)
    assert not columns.columnar({**schema, "enable_dynamic_field": True}, spec)
    assert not columns.columnar({**schema, "fields": schema["fields"][:-1]}, spec)
    extra = {"name": "bm25", "type": DataType.SPARSE_FLOAT_VECTOR, "is_function_output": True}
    assert not columns.columnar({**schema, "fields": [*schema["fields"], extra]}, spec)
    assert not columns.columnar({**schema, "struct_array_fields": [{"name": "s"}]}, spec)


class StubRecorder:
    """Stands in for the handler's gRPC stub: records each Upsert request's bytes, then sends it."""

    def __init__(self, stub: Any) -> None:
        self._stub, self.sent = stub, []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._stub, name)
        if name != "Upsert":
            return attr
        recorder = self

        class Call:
            def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
                recorder.sent.append(("rows", request.SerializeToString()))  # pymilvus' upsert_rows
                return attr(request, *args, **kwargs)

            def future(self, request: Any, *args: Any, **kwargs: Any) -> Any:
                recorder.sent.append(("columns", request.SerializeToString()))  # upsert(upsert_param=...)
                return attr.future(request, *args, **kwargs)

        return Call()


def test_a_server_receives_the_bytes_pymilvus_sends(lite_client, lite_cfg: MilvusConfig, make_batch,
                                                     monkeypatch) -> None:
    spec = CollectionSpec.from_config(lite_cfg, dense_dim=16, has_sparse=True, metadata=dict(META))
    ensure_collection(lite_client, spec)
    table = batch(make_batch, 30)
    inner: MilvusClient = lite_client._client
    conn = inner._get_connection()
    stub = StubRecorder(conn._stub)
    monkeypatch.setattr(conn, "_stub", stub)
    inner.upsert(spec.name, to_rows(table, spec))  # pymilvus' own row path
    writer = MilvusWriter(lite_client, spec, lite_cfg)
    assert writer.write(table) == 30 and writer.requests == 1
    assert [how for how, _ in stub.sent] == ["rows", "columns"] and stub.sent[0][1] == stub.sent[1][1]
    rows = lite_client.get(spec.name, ids=["d7#1"], output_fields=["text", "dense", "sparse", "lang", "score"])
    assert rows[0]["text"] == to_rows(table.slice(7, 1), spec)[0]["text"]
    np.testing.assert_allclose(rows[0]["dense"], table.column("dense")[7].as_py(), rtol=1e-6)


def test_a_schema_mismatch_is_sent_again_once_on_a_fresh_schema(lite_client, lite_cfg: MilvusConfig, make_batch,
                                                                monkeypatch) -> None:
    spec = CollectionSpec.from_config(lite_cfg, dense_dim=16, has_sparse=True, metadata=dict(META))
    ensure_collection(lite_client, spec)
    conn = lite_client._client._get_connection()
    real, calls, invalidated = conn.upsert, [], []

    def upsert(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["upsert_param"].schema_timestamp)
        if len(calls) == 1:
            raise SchemaMismatchRetryableException("collection schema mismatch")
        return real(*args, **kwargs)

    monkeypatch.setattr(conn, "upsert", upsert)
    monkeypatch.setattr(conn, "_invalidate_schema", lambda name, db_name="": invalidated.append(name))
    columns.send(lite_client._client, spec, batch(make_batch, 5))
    assert len(calls) == 2 and invalidated == ["docs"]


class TableRecorder:
    """An inner client that takes tables (what CheckedClient hands on) and records their keys."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def upsert_table(self, spec: CollectionSpec, table: pa.Table, *, timeout: float | None = None,
                     send: Any = None) -> None:
        self.sent.append(columns.keys(table))

    def close(self) -> None:
        pass


def test_the_strict_client_refuses_a_batch_repeating_a_key(tmp_path: Path, make_batch) -> None:
    inner = TableRecorder()
    client = CheckedClient(inner, str(tmp_path / "journal"))
    spec = spec_of(metadata={})
    table = batch(make_batch, 3)
    twice = pa.concat_tables([table, table.slice(1, 1)])
    with pytest.raises(MilvusException) as info:
        columns.upsert_table(client, spec, twice)
    assert info.value.code == DUPLICATE_PK_CODE and "'d1#1'" in str(info.value) and not inner.sent
    columns.upsert_table(client, spec, table)
    client.close()
    assert inner.sent == [["d0#0", "d1#1", "d2#2"]]
    assert journal_counts(str(tmp_path / "journal")) == {"d0#0": 1, "d1#1": 1, "d2#2": 1}
