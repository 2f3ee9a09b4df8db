"""Arrow batches (the columns of :mod:`cluster.contract`) to the values Milvus takes.

Vectors are converted column-wise with numpy (no Python loop per element here).
:func:`field_values` gives every field's values for a batch, one column at a time; the writers'
upsert requests are built from them column by column (:mod:`cluster.milvus.columns`).
:func:`to_rows` turns the same values into one dict per row, what pymilvus' ``MilvusClient.upsert``
and its bulk writer take: the reference the column-wise requests are checked against byte for
byte. pymilvus packs such rows in Python, ~125 us of CPU per BGE-M3-size row with ~65 us more
here to make the rows, against ~8 us for the column-wise request (``benchmarks/writers.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from cluster import contract as C
from cluster.milvus.dense_types import encode_rows
from cluster.milvus.schema import DOC_ID_MAX_LENGTH, METADATA_VARCHAR_MAX_LENGTH, PK_MAX_LENGTH, CollectionSpec

log = logging.getLogger(__name__)

# Milvus refuses empty sparse vectors: an empty one is written as this single negligible weight
# on token id 0 (a special token, never in a query), so the chunk keeps its dense vector.
EMPTY_SPARSE_INDEX = 0
EMPTY_SPARSE_VALUE = float(np.finfo(np.float32).tiny)
ROW_OVERHEAD_BYTES = 64


@dataclass(frozen=True)
class SparseColumn:
    """Sparse vectors of a batch in CSR form: row i is indices/values[offsets[i]:offsets[i+1]]."""

    offsets: np.ndarray  # int64, n + 1
    indices: np.ndarray  # int64
    values: np.ndarray  # float32

    @property
    def nnz(self) -> np.ndarray:
        """Weights per row."""
        return np.diff(self.offsets)


def needed_columns(spec: CollectionSpec) -> tuple[str, ...]:
    """The batch columns a writer needs for ``spec``."""
    cols = [C.PK, C.DOC_ID, C.CHUNK_INDEX, C.DENSE] + ([C.TEXT] if spec.store_text else [])
    cols += [C.SPARSE_INDICES, C.SPARSE_VALUES] if spec.has_sparse else []
    return tuple(cols + list(spec.metadata))


def column(table: pa.Table, name: str) -> pa.Array:
    """One column as a single contiguous array (its only chunk as it is: combining copies)."""
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def dense_matrix(table: pa.Table, dim: int) -> np.ndarray:
    """The ``dense`` column (list / large_list / fixed_size_list of floats) as an (n, dim) float32 array.

    Raises:
        ValueError: A vector is null or not ``dim`` long; the message names its pk.
    """
    arr = column(table, C.DENSE)
    n = len(arr)
    if arr.null_count:
        bad = table.column(C.PK).filter(pc.is_null(table.column(C.DENSE)))[0].as_py()
        raise ValueError(f"row {bad!r} has no dense vector: set its `error` instead of passing a null vector")
    if pa.types.is_fixed_size_list(arr.type):
        if arr.type.list_size != dim:
            raise ValueError(f"dense vectors have {arr.type.list_size} dims, the collection has {dim}")
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != dim)
        if wrong.size:
            pk = table.column(C.PK)[int(wrong[0])].as_py()
            raise ValueError(f"row {pk!r} has a dense vector of {lengths[wrong[0]]} dims, the collection has {dim}")
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(n, dim)


def sparse_column(table: pa.Table) -> SparseColumn:
    """``sparse_indices`` / ``sparse_values`` as CSR arrays (a null list = no weights).

    Raises:
        ValueError: indices and values differ in length on some row; the message names its pk.
    """
    idx, val = column(table, C.SPARSE_INDICES), column(table, C.SPARSE_VALUES)
    li = pc.fill_null(pc.list_value_length(idx), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    lv = pc.fill_null(pc.list_value_length(val), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    wrong = np.flatnonzero(li != lv)
    if wrong.size:
        pk = table.column(C.PK)[int(wrong[0])].as_py()
        raise ValueError(f"row {pk!r} has {li[wrong[0]]} sparse indices but {lv[wrong[0]]} values")
    offsets = np.zeros(len(li) + 1, dtype=np.int64)
    np.cumsum(li, out=offsets[1:])
    indices = idx.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    values = val.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return SparseColumn(offsets, indices, values)


def with_empty_placeholder(sparse: SparseColumn) -> SparseColumn:
    """Give each empty row the placeholder weight (Milvus rejects empty sparse vectors)."""
    empty = np.flatnonzero(sparse.nnz == 0)
    if not empty.size:
        return sparse
    log.debug("%d chunk(s) without sparse weights get a negligible placeholder weight", empty.size)
    at = sparse.offsets[empty]  # insert one entry at the start of each empty row
    indices = np.insert(sparse.indices, at, EMPTY_SPARSE_INDEX)
    values = np.insert(sparse.values, at, np.float32(EMPTY_SPARSE_VALUE))
    bump = np.zeros(len(sparse.offsets), dtype=np.int64)
    bump[empty + 1] = 1
    return SparseColumn(sparse.offsets + np.cumsum(bump), indices, values)


def sparse_rows(sparse: SparseColumn) -> list[sp.csr_matrix]:
    """One single-row CSR matrix per row (what pymilvus converts fastest); empty rows get the placeholder."""
    sparse = with_empty_placeholder(sparse)
    width = int(sparse.indices.max()) + 1 if sparse.indices.size else 1
    o = sparse.offsets.tolist()
    return [sp.csr_matrix((sparse.values[a:b], sparse.indices[a:b], [0, b - a]), shape=(1, width))
            for a, b in zip(o[:-1], o[1:])]


def sparse_lists(sparse: SparseColumn) -> list[dict[str, list]]:
    """One ``{"indices": [...], "values": [...]}`` per row (the bulk writer's format); empty rows get a placeholder."""
    sparse = with_empty_placeholder(sparse)
    o = sparse.offsets.tolist()
    indices, values = sparse.indices.tolist(), sparse.values.tolist()
    return [{"indices": indices[a:b], "values": values[a:b]} for a, b in zip(o[:-1], o[1:])]


def cut_utf8(values: list[str | None], max_bytes: int) -> list[str | None]:
    """Cut each string to at most ``max_bytes`` UTF-8 bytes, on a character boundary."""
    out = list(values)
    for i, v in enumerate(out):
        if v is not None and len(v) * 4 > max_bytes and len(v.encode()) > max_bytes:
            out[i] = v.encode()[:max_bytes].decode("utf-8", errors="ignore")
    return out


def strings(table: pa.Table, name: str, max_bytes: int) -> list[str | None]:
    """A string column as Python strings, cut to ``max_bytes`` (only the few long ones are touched)."""
    arr = column(table, name)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    values = arr.to_pylist()
    lengths = pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False)
    if lengths.size and int(lengths.max()) > max_bytes:
        values = cut_utf8(values, max_bytes)
    return values


def check_keys(table: pa.Table) -> None:
    """Raise ValueError when a pk or doc_id is null or longer than its VARCHAR field."""
    for name, limit in ((C.PK, PK_MAX_LENGTH), (C.DOC_ID, DOC_ID_MAX_LENGTH)):
        arr = column(table, name)
        if arr.null_count:
            raise ValueError(f"{arr.null_count} row(s) have a null {name}")
        lengths = pc.binary_length(arr.cast(pa.string())).to_numpy(zero_copy_only=False)
        long = np.flatnonzero(lengths > limit)
        if long.size:
            raise ValueError(f"{name} {arr[int(long[0])].as_py()[:80]!r}... is {lengths[long[0]]} bytes, Milvus "
                             f"keeps at most {limit}: shorten the document ids (or mark such rows with an error)")


def row_bytes(table: pa.Table, spec: CollectionSpec, sparse: SparseColumn | None) -> np.ndarray:
    """Estimated request bytes of each row (vectors, strings, numbers, and a fixed overhead)."""
    n = table.num_rows
    size = np.full(n, ROW_OVERHEAD_BYTES + spec.dense_dim * 4 + 8 * (1 + len(spec.metadata)), dtype=np.int64)
    if sparse is not None:
        size += 8 * np.maximum(sparse.nnz, 1)
    for name in [C.PK, C.DOC_ID] + ([C.TEXT] if spec.store_text else []) + list(spec.metadata):
        arr = column(table, name)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            size += pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return size


def fingerprints(table: pa.Table) -> pa.Array:
    """The ``embed_fp`` column, "" where a row has none (a row without one is never skipped as unchanged)."""
    if C.EMBED_FP not in table.column_names:
        return pa.array([""] * table.num_rows, pa.string())
    return pc.fill_null(column(table, C.EMBED_FP).cast(pa.string()), "")


def field_values(table: pa.Table, spec: CollectionSpec) -> dict[str, Any]:
    """The value of every field of ``spec`` for the rows of ``table``, one column at a time.

    Scalar fields: lists of Python values (strings cut to their field's bytes, a missing text or
    fingerprint as ""); ``dense``: the (n, dim) float32 matrix; ``sparse``: a :class:`SparseColumn`
    whose empty rows have the placeholder weight. Both :func:`to_rows` and the column-wise upsert
    request (:mod:`cluster.milvus.columns`) are made from these, so they hold the same values.

    Raises:
        ValueError: A null or too long pk / doc_id, or a dense vector of another dimension.
    """
    check_keys(table)
    cols: dict[str, Any] = {
        C.PK: column(table, C.PK).cast(pa.string()).to_pylist(),
        C.DOC_ID: column(table, C.DOC_ID).cast(pa.string()).to_pylist(),
        C.CHUNK_INDEX: column(table, C.CHUNK_INDEX).cast(pa.int64()).to_pylist(),
    }
    if spec.fingerprints:
        cols[C.EMBED_FP] = fingerprints(table).to_pylist()
    if spec.store_text:
        cols[C.TEXT] = [t or "" for t in strings(table, C.TEXT, spec.text_max_length)]
    cols[C.DENSE] = dense_matrix(table, spec.dense_dim)
    if spec.has_sparse:
        cols[C.SPARSE_FIELD] = with_empty_placeholder(sparse_column(table))
    for name, dtype in spec.metadata_types.items():
        if dtype.name == "VARCHAR":
            cols[name] = strings(table, name, METADATA_VARCHAR_MAX_LENGTH)
        else:
            cols[name] = column(table, name).to_pylist()
    return cols


def to_rows(table: pa.Table, spec: CollectionSpec, *, sparse_as: str = "csr") -> list[dict[str, object]]:
    """Row dicts: dense as lists of floats, sparse as 1-row CSR matrices (``MilvusClient.upsert``)
    or, with ``sparse_as="lists"``, as ``{"indices", "values"}`` dicts (pymilvus' bulk writer).

    The job's writers send column-wise requests instead (:mod:`cluster.milvus.columns`); rows remain
    for pymilvus' own row path (the reference those requests are checked against, test doubles) and
    for pymilvus' bulk writer. ``table`` holds only rows to write (no ``error``); extra columns are ignored.
    """
    cols = field_values(table, spec)
    # nested lists: pymilvus extends its protobuf from a list faster than from ndarray rows (measured)
    cols[C.DENSE] = encode_rows(cols[C.DENSE], spec.dense_type, spec.int8_scale)
    if spec.has_sparse:
        sparse = cols[C.SPARSE_FIELD]
        cols[C.SPARSE_FIELD] = sparse_rows(sparse) if sparse_as == "csr" else sparse_lists(sparse)
    names = list(cols)
    return [dict(zip(names, values)) for values in zip(*cols.values())]
