"""Upsert requests built column by column: the same bytes pymilvus builds from row dicts, at a fraction of the CPU.

``MilvusClient.upsert`` takes one dict per row and packs every value into the request's protobuf in
Python (``Prepare.row_upsert_param``): per BGE-M3-size row (dense 1024 float32, ~100 sparse weights,
~1 kB of text) that cost ~270 us of writer CPU end to end (``benchmarks/writers.py``): ~125 us in
pymilvus (it walks every VARCHAR value character by character for a length check that never sees
the string's length, packs each sparse row with ``struct`` after a sort and a NaN check per weight,
extends the float vector from 1024 Python floats), ~65 us making those rows, the rest in gRPC.
Built column-wise the same request costs ~8 us, ~17 us a row end to end.

:func:`build_request` makes the same ``UpsertRequest`` from the batch's columns
(:func:`cluster.milvus.payload.field_values`, which :func:`~cluster.milvus.payload.to_rows` uses
too): the dense matrix as one packed buffer parsed into the message (a copy in protobuf's C code),
the sparse rows as interleaved ``(uint32 index, float32 weight)`` bytes cut from one numpy buffer
(the layout pymilvus' ``sparse_rows_to_proto`` writes and Milvus reads), strings and scalars
extended one column at a time, the same checks (VARCHAR lengths, sparse indices and NaN weights)
with pymilvus' messages. :func:`send` sends it with the client's own upsert call (pymilvus' gRPC
retry and its cached schema; the request carries the schema's timestamp as pymilvus' row path
does, and a server that answers "schema mismatch" gets the request again, rebuilt on a fresh
schema, once). ``tests/cluster/milvus/test_upsert_columns.py`` checks that the serialized request is
byte for byte pymilvus' own for the same rows (each dense type, sparse, cut text, ``embed_fp``,
nullable metadata) and that a milvus-lite server receives exactly those bytes.

A collection this builder does not know (a dynamic field, struct fields, function outputs, a field
that is not the spec's) is written through pymilvus' row path instead, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
from pymilvus import DataType, MilvusClient
from pymilvus.client import type_info
from pymilvus.exceptions import DataNotMatchException, ExceptionsMessage, ParamError, SchemaMismatchRetryableException
from pymilvus.grpc_gen import milvus_pb2, schema_pb2
from pymilvus.settings import Config

from cluster import contract as C
from cluster.milvus import payload as R
from cluster.milvus.dense_types import encode_bytes
from cluster.milvus.schema import CollectionSpec

log = logging.getLogger(__name__)

_SCALARS = {DataType.VARCHAR, DataType.INT32, DataType.INT64, DataType.DOUBLE, DataType.FLOAT, DataType.BOOL}
_BYTE_VECTORS = {DataType.FLOAT16_VECTOR, DataType.BFLOAT16_VECTOR, DataType.INT8_VECTOR, DataType.BINARY_VECTOR}
_VECTORS = {DataType.FLOAT_VECTOR, DataType.SPARSE_FLOAT_VECTOR} | _BYTE_VECTORS
MAX_SPARSE_INDEX = 2**32 - 2  # pymilvus refuses indices outside 0 .. 2**32 - 2
_SPARSE_PAIR = np.dtype([("index", "<u4"), ("value", "<f4")])


def _input_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields an upsert carries, in schema order (pymilvus: every field but function outputs)."""
    return [f for f in schema.get("fields", []) if not f.get("is_function_output", False)]


def columnar(schema: dict[str, Any], spec: CollectionSpec) -> bool:
    """Whether :func:`build_request` can write into a collection described by ``schema`` (``describe_collection``)."""
    fields = _input_fields(schema)
    return (not schema.get("enable_dynamic_field", False) and not schema.get("struct_array_fields")
            and len(fields) == len(schema.get("fields", []))
            and sorted(f["name"] for f in fields) == sorted(spec.field_names)
            and all(DataType(f["type"]) in _SCALARS | _VECTORS and not f.get("is_dynamic", False) for f in fields)
            and Config.EncodeProtocol.lower() == "utf-8")


def _packed(data: bytes) -> bytes:
    """``data`` as field 1 (length-delimited) of a message: how a packed repeated scalar is serialized."""
    n, head = len(data), bytearray(b"\x0a")
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + data


def _has_valid(field: dict[str, Any]) -> bool:
    return bool(field.get("nullable", False) or field.get("default_value", None))


def _scalars(fd: schema_pb2.FieldData, field: dict[str, Any], values: list[Any]) -> None:
    dtype = DataType(field["type"])
    present = values
    if _has_valid(field):
        valid = [v is not None for v in values]
        fd.valid_data.extend(valid)
        if not all(valid):
            present = [v for v in values if v is not None]
    if dtype == DataType.VARCHAR and present:
        max_len = int(field.get("params", {}).get(Config.MaxVarCharLengthKey, Config.MaxVarCharLength))
        longest = max(present, key=len)
        if len(longest) > max_len:  # pymilvus' row path check and message (characters, not bytes)
            raise ParamError(message=f"invalid input of field ({field['name']}), length of string exceeds max "
                                     f"length. length: {len(longest)}, max length: {max_len}")
    try:
        getattr(fd.scalars, type_info.get_scalar_attr(dtype)).data.extend(present)
    except (TypeError, ValueError) as e:
        raise DataNotMatchException(message=ExceptionsMessage.DataTypeInconsistent) from e


def _sparse_contents(sparse: R.SparseColumn) -> list[bytes]:
    """One ``(uint32 index, float32 value)*`` byte string per row, pairs in ascending index order."""
    indices, values, offsets = sparse.indices, sparse.values, sparse.offsets
    if indices.size:
        if int(indices.min()) < 0 or int(indices.max()) > MAX_SPARSE_INDEX:
            bad = indices[(indices < 0) | (indices > MAX_SPARSE_INDEX)][0]
            raise ParamError(message=f"sparse vector index must be positive and less than 2^32-1: {bad}")
        if np.isnan(values).any():
            raise ParamError(message="sparse vector value must not be NaN")
        row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        step = np.diff(indices)
        if (step < 0).any() and (step[row[1:] == row[:-1]] < 0).any():  # pymilvus sorts each row (stably)
            order = np.lexsort((indices, row))
            indices, values = indices[order], values[order]
    pairs = np.empty(len(indices), dtype=_SPARSE_PAIR)
    pairs["index"], pairs["value"] = indices, values
    buf = pairs.tobytes()
    ends = (offsets * _SPARSE_PAIR.itemsize).tolist()
    return [buf[a:b] for a, b in zip(ends[:-1], ends[1:])]


def build_request(table: pa.Table, spec: CollectionSpec, schema: dict[str, Any], *,
                  schema_timestamp: int = 0) -> milvus_pb2.UpsertRequest:
    """The ``UpsertRequest`` pymilvus' ``Prepare.row_upsert_param`` makes of ``to_rows(table, spec)``.

    Args:
        table: Rows to write (no ``error`` rows), the columns of :mod:`cluster.contract`.
        spec: The collection.
        schema: Its description (``describe_collection``; :func:`columnar` must accept it).
        schema_timestamp: The schema's ``update_timestamp`` (pymilvus sends it with every row upsert).

    Raises:
        ValueError: Bad rows (see :func:`cluster.milvus.payload.field_values`).
        pymilvus.exceptions.ParamError: A VARCHAR longer than its field, a sparse index outside
            0..2**32-2 or a NaN weight (what pymilvus raises for the same rows).
    """
    values = R.field_values(table, spec)
    n = table.num_rows
    request = milvus_pb2.UpsertRequest(collection_name=spec.name, partition_name="", num_rows=n,
                                       schema_timestamp=schema_timestamp, partial_update=False)
    for field in _input_fields(schema):
        name, dtype = field["name"], DataType(field["type"])
        fd = request.fields_data.add(field_name=name, type=dtype)
        if dtype in _SCALARS:
            _scalars(fd, field, values[name])
            continue
        if _has_valid(field):  # a nullable vector field: every row of the job has its vector
            fd.valid_data.extend([True] * n)
        if dtype == DataType.SPARSE_FLOAT_VECTOR:
            fd.vectors.sparse_float_vector.contents.extend(_sparse_contents(values[name]))
        elif dtype == DataType.FLOAT_VECTOR:
            matrix = values[name]
            fd.vectors.dim = matrix.shape[1]
            fd.vectors.float_vector.MergeFromString(_packed(encode_bytes(matrix, "float32")))
        else:
            dim = field.get("params", {}).get("dim", 0)
            fd.vectors.dim = int(dim)
            setattr(fd.vectors, type_info.get_vector_attr(dtype),
                    encode_bytes(values[name], spec.dense_type, spec.int8_scale))
    return request


def send(client: MilvusClient, spec: CollectionSpec, table: pa.Table, *, timeout: float | None = None) -> Any:
    """Upsert ``table``'s rows with a column-wise request through ``client``'s connection.

    Falls back to ``client.upsert`` with row dicts when :func:`columnar` refuses the collection.
    """
    conn = client._get_connection()
    context = client._generate_call_context()
    for attempt in (1, 2):
        schema, stamp = conn._get_schema(spec.name, timeout=timeout, context=context)
        if not columnar(schema, spec):
            log.debug("collection %r: fields this writer does not build column-wise; writing rows", spec.name)
            return client.upsert(spec.name, R.to_rows(table, spec), timeout=timeout)
        request = build_request(table, spec, schema, schema_timestamp=stamp)
        try:
            return conn.upsert(spec.name, [], upsert_param=request, schema=schema, timeout=timeout, context=context)
        except SchemaMismatchRetryableException:
            if attempt == 2:
                raise
            conn._invalidate_schema(spec.name, db_name=context.get_db_name())  # as pymilvus' row path does
    return None  # not reached


def upsert_table(client: Any, spec: CollectionSpec, table: pa.Table, *, timeout: float | None = None) -> Any:
    """Upsert the rows of ``table`` through ``client``.

    A :class:`~cluster.milvus.strict.CheckedClient` checks the request first; a ``MilvusClient``
    gets a column-wise request (:func:`send`); any other client (a test double) gets row dicts,
    ``client.upsert(collection, rows, timeout=...)``.
    """
    own = getattr(client, "upsert_table", None)
    if callable(own):
        return own(spec, table, timeout=timeout, send=upsert_table)
    if isinstance(client, MilvusClient):
        return send(client, spec, table, timeout=timeout)
    return client.upsert(spec.name, R.to_rows(table, spec), timeout=timeout)


def keys(table: pa.Table) -> list[str]:
    """The primary keys of ``table``'s rows."""
    return R.column(table, C.PK).cast(pa.string()).to_pylist()
