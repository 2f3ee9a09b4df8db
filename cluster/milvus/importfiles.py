"""Parquet import files for Milvus' bulk import, written column by column with pyarrow.

One :class:`ImportFiles` per writer and target collection: :meth:`ImportFiles.write` converts an
embedded batch to the collection's columns (vectorized: no Python work per row, except for the
few strings longer than their VARCHAR field) and appends it to a local parquet part; parts roll
over at ``max_file_bytes``; :meth:`ImportFiles.close` drops the rows of abandoned tags, uploads
each part to ``root/name-<part>.parquet`` and returns the :class:`ImportFile` list that
:class:`cluster.milvus.imports.ImportClient` imports.

The file layout is what Milvus' parquet import reader accepts (sources in docs/milvus-import.md):

* exactly the collection's fields, in field order, and nothing else (Milvus 2.5 fails a job
  whose file has a column that is not a field; 2.6 ignores it);
* ``pk``, ``doc_id``, ``text`` and VARCHAR metadata: ``string`` (not ``large_string``);
  ``text`` cut to ``spec.text_max_length`` bytes and VARCHAR metadata to 65535 bytes, on a
  character boundary (Milvus fails a job with a longer value);
* ``chunk_index``: ``int32``; INT64 / DOUBLE / BOOL metadata: ``int64`` / ``double`` / ``bool``,
  nulls kept (the metadata fields are nullable);
* ``dense``: ``list<float32>`` (the reader accepts LIST, not FIXED_SIZE_LIST, in older releases);
* ``sparse``: a JSON string ``{"indices":[...],"values":[...]}`` per row, the format pymilvus'
  own bulk writer produces and every Milvus with sparse import reads; the weights are printed
  as the shortest decimals of the float32 values, so they parse back to the exact float32. An
  empty sparse row gets the placeholder weight of :func:`cluster.milvus.payload.with_empty_placeholder`;
* row groups of about 32 MB (pymilvus' value, to bound the server's reader memory); files of
  at most 16 GiB (``dataNode.import.maxImportFileSizeInGB``); page encodings and codecs chosen
  for the writer's CPU (:func:`parquet_options`).

The arrow schema is the one pymilvus' ``LocalBulkWriter`` writes for the same collection, save that
the collection's non-nullable fields are required columns (as Milvus' own ``ConvertToArrowSchema``
makes them) where LocalBulkWriter makes every column optional; Milvus reads both
(``tests/cluster/milvus/test_importfiles_schema.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pymilvus import DataType

from cluster import contract as C
from cluster.milvus import payload as R
from cluster.milvus.schema import METADATA_VARCHAR_MAX_LENGTH, CollectionSpec
from cluster.source.storage_retry import retry
from embedder.storage import full_path

log = logging.getLogger(__name__)

MAX_IMPORT_FILE_BYTES = 16 * 1024**3  # Milvus: dataNode.import.maxImportFileSizeInGB (16) * 1024^3
# Parts are cut on arrow bytes, which parquet files match closely (vectors do not compress) plus a
# footer: a part never grows past this share of the 16 GiB limit, whatever max_file_bytes says.
_HARD_BUDGET = int(MAX_IMPORT_FILE_BYTES * 0.99)
ROW_GROUP_BYTES = 32 * 1024 * 1024
ROW_GROUP_MAX_ROWS = 1_000_000
MAX_SPARSE_INDEX = 2**32 - 2  # Milvus keeps sparse indices as uint32 and reserves the largest value
_LIST_OFFSET_LIMIT = 2**31 - 1

_ARROW_OF = {
    DataType.VARCHAR: pa.string(), DataType.INT64: pa.int64(), DataType.INT32: pa.int32(),
    DataType.DOUBLE: pa.float64(), DataType.FLOAT: pa.float32(), DataType.BOOL: pa.bool_(),
}


@dataclass(frozen=True)
class ImportFile:
    """One uploaded import file.

    Attributes:
        uri: Where it is, ``s3://bucket/key`` (a plain path on a local filesystem).
        path: The key relative to the bucket, as the import request names it.
        rows: Rows in the file.
        bytes: Size of the file.
        tag_rows: Rows per caller tag (only tags with rows).
    """

    uri: str
    path: str
    rows: int
    bytes: int
    tag_rows: dict[int, int] = field(default_factory=dict)


def import_schema(spec: CollectionSpec) -> pa.Schema:
    """The arrow schema of the import files of ``spec``: its fields, in order, with the types Milvus reads."""
    fields = [pa.field(C.PK, pa.string(), nullable=False), pa.field(C.DOC_ID, pa.string(), nullable=False),
              pa.field(C.CHUNK_INDEX, pa.int32(), nullable=False)]
    if spec.fingerprints:
        fields.append(pa.field(C.EMBED_FP, pa.string(), nullable=False))
    if spec.store_text:
        fields.append(pa.field(C.TEXT, pa.string(), nullable=False))
    fields.append(pa.field(C.DENSE, pa.list_(pa.float32()), nullable=False))
    if spec.has_sparse:
        fields.append(pa.field(C.SPARSE_FIELD, pa.string(), nullable=False))
    fields += [pa.field(name, _ARROW_OF[dtype], nullable=True) for name, dtype in spec.metadata_types.items()]
    return pa.schema(fields)


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """``pq.ParquetWriter`` options for import files of ``schema``, chosen for the writer's CPU.

    pyarrow's defaults dictionary-encode, snappy-compress and keep min/max statistics of every
    column. The vectors (``dense``: random floats; ``sparse``: one distinct JSON text per row)
    gain nothing from any of it: a dictionary over 1024 floats a row cost ~45 us per BGE-M3-size
    row and made the file bigger (it falls back to plain pages once the dictionary is full), and
    snappy saved ~0 % of the floats and ~25 % of the JSON for ~4 and ~8 us a row. So: plain,
    uncompressed pages without statistics for the vectors; no dictionary for the per-row keys and
    the text (distinct per row); snappy for the strings; dictionaries for ``chunk_index`` and the
    metadata. All are plain parquet encodings and codecs that every Milvus parquet reader reads.
    """
    vectors = {C.DENSE, C.SPARSE_FIELD}
    distinct = {C.PK, C.DOC_ID, C.EMBED_FP, C.TEXT}
    return {"use_dictionary": [n for n in schema.names if n not in vectors | distinct],
            "compression": {n: "none" if n in vectors else "snappy" for n in schema.names},
            "write_statistics": [n for n in schema.names if n not in vectors]}


def cut_strings(arr: pa.Array, max_bytes: int) -> pa.Array:
    """A string array with each value cut to at most ``max_bytes`` UTF-8 bytes on a character boundary.

    Only the values that are too long are touched (in Python); the others stay as they are.
    """
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    lengths = pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False)
    long = np.flatnonzero(lengths > max_bytes)
    if not long.size:
        return arr
    cut = R.cut_utf8(arr.take(pa.array(long)).to_pylist(), max_bytes)
    mask = np.zeros(len(arr), dtype=bool)
    mask[long] = True
    return pc.replace_with_mask(arr, pa.array(mask), pa.array(cut, pa.string()))


def _pk_of(table: pa.Table, row: int) -> object:
    return table.column(C.PK)[row].as_py()


def _dense(table: pa.Table, dim: int) -> pa.Array:
    matrix = R.dense_matrix(table, dim)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise ValueError(f"row {_pk_of(table, int(bad[0]))!r} has a non-finite dense vector: set its `error` "
                         "instead of writing it")
    if matrix.size > _LIST_OFFSET_LIMIT:
        raise ValueError(f"a batch of {len(matrix)} vectors of {dim} dims is too large for one write: pass smaller "
                         "batches")
    offsets = pa.array(np.arange(0, matrix.size + 1, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), pa.float32()))


def _sparse(table: pa.Table) -> pa.Array:
    sparse = R.with_empty_placeholder(R.sparse_column(table))
    if not np.isfinite(sparse.values).all():
        row = int(np.searchsorted(sparse.offsets, np.flatnonzero(~np.isfinite(sparse.values))[0], side="right")) - 1
        raise ValueError(f"row {_pk_of(table, row)!r} has a non-finite sparse weight: set its `error` instead")
    if sparse.indices.size and (sparse.indices.min() < 0 or sparse.indices.max() > MAX_SPARSE_INDEX):
        raise ValueError(f"sparse indices must be in 0..{MAX_SPARSE_INDEX}, got {sparse.indices.min()}.."
                         f"{sparse.indices.max()}")
    if sparse.indices.size > _LIST_OFFSET_LIMIT:
        raise ValueError("too many sparse weights for one write: pass smaller batches")
    offsets = pa.array(sparse.offsets.astype(np.int32))
    indices = pa.ListArray.from_arrays(offsets, pa.array(sparse.indices, pa.int64()))
    # the shortest decimal of each float32 that parses back to it: read as a float32, or as a float64
    # then rounded to float32 (53 >= 2 * 24 + 2 bits: the double rounding cannot move it), it is the
    # weight written; half the digits of the float64's decimals, and a third less CPU to print
    values = pa.ListArray.from_arrays(offsets, pa.array(sparse.values, pa.float32()))
    text = pa.list_(pa.string())
    return pc.binary_join_element_wise(
        '{"indices":[', pc.binary_join(indices.cast(text), ","), '],"values":[',
        pc.binary_join(values.cast(text), ","), "]}", "")


def import_table(table: pa.Table, spec: CollectionSpec) -> pa.Table:
    """An embedded batch (columns of :mod:`cluster.contract`) as a table of :func:`import_schema`.

    Raises:
        KeyError: A needed column is missing.
        ValueError: A row has an ``error`` (the caller filters those), a null or too long pk /
            doc_id, a null chunk_index, a dense vector of another dimension or not finite, or
            sparse indices and values of different lengths; the message names the row.
    """
    C.require_columns("milvus import files", table.column_names, R.needed_columns(spec))
    if C.ERROR in table.column_names:
        errors = table.column(C.ERROR)
        if errors.null_count != len(errors):
            raise ValueError(f"{len(errors) - errors.null_count} row(s) have an `error`: filter them out before "
                             "writing import files (they belong in the dead-letter output)")
    R.check_keys(table)
    chunk_index = R.column(table, C.CHUNK_INDEX)
    if chunk_index.null_count:
        raise ValueError(f"{chunk_index.null_count} row(s) have a null {C.CHUNK_INDEX}")
    arrays: list[pa.Array] = [R.column(table, C.PK).cast(pa.string()), R.column(table, C.DOC_ID).cast(pa.string()),
                              chunk_index.cast(pa.int32())]
    if spec.fingerprints:
        arrays.append(R.fingerprints(table))
    if spec.store_text:
        arrays.append(pc.fill_null(cut_strings(R.column(table, C.TEXT), spec.text_max_length), ""))
    arrays.append(_dense(table, spec.dense_dim))
    if spec.has_sparse:
        arrays.append(_sparse(table))
    for name, dtype in spec.metadata_types.items():
        col = R.column(table, name)
        arrays.append(cut_strings(col, METADATA_VARCHAR_MAX_LENGTH) if dtype == DataType.VARCHAR
                      else col.cast(_ARROW_OF[dtype]))
    return pa.Table.from_arrays(arrays, schema=import_schema(spec))


def bucket_relative(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` (``bucket/key`` on object storage) as the import request names it: ``key``.

    On a local filesystem the absolute path is returned unchanged.
    """
    if isinstance(fs, LocalFileSystem):
        return path
    return path.split("/", 1)[1] if "/" in path else ""


@dataclass
class _Part:
    index: int
    local: str
    rows: int = 0
    bytes: float = 0.0  # estimate while open: arrow bytes written + buffered
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = field(default_factory=list)
    pending_tags: list[np.ndarray] = field(default_factory=list)
    pending_bytes: int = 0
    tags: list[np.ndarray] = field(default_factory=list)
    done: bool = False  # uploaded, or empty and dropped


class ImportFiles:
    """Import files of one target collection, written by one writer.

    Args:
        spec: The target collection; its fields decide the columns.
        fs: Filesystem of ``root``, from :func:`embedder.storage.filesystem` (the bucket
            Milvus imports from: ``minio.bucketName`` of the server).
        root: Folder on ``fs`` (``bucket/prefix`` on S3) the files are uploaded under.
        name: File-name prefix, unique per writer: files are ``root/name-00000.parquet``...
        max_file_bytes: Size at which a part is finished and the next begins (at most 16 GiB).
        scratch_dir: Local folder for the parts until they are uploaded.

    Raises:
        ValueError: ``max_file_bytes`` out of range, or ``name`` empty or holding a ``/``.
    """

    def __init__(self, spec: CollectionSpec, fs: fsspec.AbstractFileSystem, root: str, name: str, *,
                 max_file_bytes: int, scratch_dir: str) -> None:
        if not 0 < max_file_bytes <= MAX_IMPORT_FILE_BYTES:
            raise ValueError(f"max_file_bytes must be in 1..{MAX_IMPORT_FILE_BYTES} (Milvus imports files of at most "
                             f"16 GiB), got {max_file_bytes}")
        if not name or "/" in name:
            raise ValueError(f"import file name prefix must be a non-empty name without '/', got {name!r}")
        self.spec, self.fs, self.name = spec, fs, name
        self.root = root.rstrip("/")
        self.max_file_bytes = max_file_bytes
        self._budget = min(max_file_bytes, _HARD_BUDGET)
        self.scratch_dir = scratch_dir
        self.schema = import_schema(spec)
        self.rows_written = 0
        os.makedirs(scratch_dir, exist_ok=True)
        self._parts: list[_Part] = []
        self._current: _Part | None = None
        self._uploaded: list[ImportFile] = []
        self._closed = False

    def write(self, table: pa.Table, tags: np.ndarray) -> int:
        """Append the rows of an embedded batch, with one int32 tag per row (e.g. its shard's index).

        Args:
            table: Rows to import, without errors (see :func:`import_table`).
            tags: One tag per row; :meth:`close` can drop all rows of given tags.

        Returns:
            The number of rows appended.

        Raises:
            RuntimeError: The files were closed.
            ValueError: ``tags`` does not have one int32 per row, or a row cannot be imported.
        """
        if self._closed:
            raise RuntimeError(f"import files {self.name!r} are closed")
        tags = np.asarray(tags)
        if tags.ndim != 1 or len(tags) != table.num_rows:
            raise ValueError(f"need one tag per row: {table.num_rows} rows, tags of shape {tags.shape}")
        if tags.size and (not np.issubdtype(tags.dtype, np.integer) or tags.min() < np.iinfo(np.int32).min
                          or tags.max() > np.iinfo(np.int32).max):
            raise ValueError(f"tags must be int32 values, got {tags.dtype} {tags.min()}..{tags.max()}")
        if table.num_rows == 0:
            return 0
        data = import_table(table, self.spec)
        tags = tags.astype(np.int32, copy=False)
        per_row = max(data.nbytes / data.num_rows, 1.0)
        start, n = 0, data.num_rows
        while start < n:
            part = self._current or self._new_part()
            room = self._budget - part.bytes
            take = min(n - start, int(room // per_row))
            if take <= 0:
                if part.rows:
                    self._finish(part)
                    continue
                take = 1  # one row above max_file_bytes gets a part of its own
            self._append(part, data.slice(start, take), tags[start:start + take], take * per_row)
            start += take
        self.rows_written += n
        return n

    def close(self, drop_tags: frozenset[int] = frozenset()) -> list[ImportFile]:
        """Finish the parts, drop the rows of ``drop_tags``, upload, delete the local copies.

        A part left empty is not uploaded; a part that loses rows is rewritten locally first.
        Calling it again after a failed upload uploads the parts that are still missing; after
        a success it returns the same files.

        Args:
            drop_tags: Tags whose rows must not be imported (e.g. shards that failed).

        Returns:
            The uploaded files, in part order.
        """
        self._closed = True
        if self._current is not None:
            self._finish(self._current)
        drop = np.fromiter(drop_tags, dtype=np.int64, count=len(drop_tags))
        for part in self._parts:
            if part.done:
                continue
            tags = np.concatenate(part.tags) if part.tags else np.zeros(0, np.int32)
            keep = ~np.isin(tags, drop) if drop.size else np.ones(len(tags), dtype=bool)
            kept = int(keep.sum())
            if kept == 0:
                if os.path.exists(part.local):
                    os.remove(part.local)
                part.done = True
                continue
            if kept < len(tags):
                self._rewrite(part, keep)
                tags = tags[keep]
                part.tags, part.rows = [tags], kept
            self._uploaded.append(self._upload(part, tags))
            part.done = True
        return list(self._uploaded)

    def discard(self) -> None:
        """Close without uploading: the local parts are deleted (uploaded files stay; see :func:`delete_files`)."""
        self._closed = True
        for part in self._parts + ([self._current] if self._current else []):
            if part.writer is not None:
                part.writer.close()
                part.writer = None
            if os.path.exists(part.local):
                os.remove(part.local)
            part.done = True
        self._current = None

    def _new_part(self) -> _Part:
        index = len(self._parts)
        part = _Part(index=index, local=os.path.join(self.scratch_dir, f"{self.name}-{index:05d}.parquet"))
        self._current = part
        return part

    def _append(self, part: _Part, data: pa.Table, tags: np.ndarray, nbytes: float) -> None:
        part.pending.append(data)
        part.pending_tags.append(tags)
        part.pending_bytes += int(nbytes)
        part.rows += data.num_rows
        part.bytes += nbytes
        if part.pending_bytes >= ROW_GROUP_BYTES or sum(t.num_rows for t in part.pending) >= ROW_GROUP_MAX_ROWS:
            self._flush(part)

    def _flush(self, part: _Part) -> None:
        if not part.pending:
            return
        data = pa.concat_tables(part.pending)
        if part.writer is None:
            part.writer = pq.ParquetWriter(part.local, self.schema, **parquet_options(self.schema))
        part.writer.write_table(data, row_group_size=min(data.num_rows, ROW_GROUP_MAX_ROWS))
        part.tags.append(np.concatenate(part.pending_tags))
        part.pending, part.pending_tags, part.pending_bytes = [], [], 0

    def _finish(self, part: _Part) -> None:
        self._flush(part)
        if part.writer is not None:
            part.writer.close()
            part.writer = None
        self._parts.append(part)
        self._current = None

    def _rewrite(self, part: _Part, keep: np.ndarray) -> None:
        tmp = part.local + ".tmp"
        source = pq.ParquetFile(part.local)
        offset = 0
        with pq.ParquetWriter(tmp, self.schema, **parquet_options(self.schema)) as writer:
            for i in range(source.num_row_groups):
                group = source.read_row_group(i)
                mask = keep[offset:offset + group.num_rows]
                offset += group.num_rows
                if mask.any():
                    kept = group if mask.all() else group.filter(pa.array(mask))
                    writer.write_table(kept, row_group_size=kept.num_rows)
        source.close()
        os.replace(tmp, part.local)

    def _upload(self, part: _Part, tags: np.ndarray) -> ImportFile:
        key = f"{self.root}/{self.name}-{part.index:05d}.parquet"
        uri = full_path(self.fs, key)
        size = os.path.getsize(part.local)
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.root, exist_ok=True)  # object stores have no folders to create
        retry(lambda: self.fs.put_file(part.local, key), what=f"uploading import file {uri}")
        os.remove(part.local)
        values, counts = np.unique(tags, return_counts=True)
        log.info("import file %s: %d rows, %d bytes", uri, part.rows, size)
        return ImportFile(uri=uri, path=bucket_relative(self.fs, key), rows=part.rows, bytes=size,
                          tag_rows=dict(zip(values.tolist(), counts.tolist())))


def delete_files(fs: fsspec.AbstractFileSystem, files: Iterable[ImportFile]) -> None:
    """Delete uploaded import files (e.g. once imported, or abandoned); missing files are fine."""
    for f in files:
        path = fs._strip_protocol(f.uri)
        try:
            retry(lambda p=path: fs.rm_file(p), what=f"deleting import file {f.uri}")
        except FileNotFoundError:
            pass
