"""Per-shard id files and the set operations on them, with memory bounded by batches, not by documents.

Each finished shard has a parquet file of its document ids (``doc_id``, sorted, unique, compared
as the exact strings the reader produced) with ``n_chunks``: the rows the document has in Milvus
after the run (its new chunk count, or for a rejected document the count it had before), and
``fp`` / ``n_tokens``: the fingerprint of the version those rows hold and its tokens (0 / null
when unknown; files written before fingerprints existed lack both columns). The
read task that streamed the shard writes the file; the driver never holds ids.

Set operations stream the files:

* :func:`distinct_count`: how many different ids a set of files holds (a k-way merge on sorted
  files, fan-in bounded; wider sets are merged in levels through temporary files). Cross-shard
  duplicates = sum of the files' sizes - distinct count.
* :func:`present`: which of a (small) candidate set occur in any of the files.
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster import contract as c

log = logging.getLogger(__name__)

SCHEMA = pa.schema([(c.DOC_ID, pa.string()), (c.N_CHUNKS, pa.int32())])
FP = "fp"
ID_SCHEMA = pa.schema([(c.DOC_ID, pa.string()), (c.N_CHUNKS, pa.int32()), (FP, pa.uint64()),
                       (c.N_TOKENS, pa.int64())])
BATCH_ROWS = 8_192  # ids read from one file at a time: a merge holds about FAN_IN x BATCH_ROWS ids
FAN_IN = 64
FILE_ROW_GROUP = BATCH_ROWS  # a reader decodes a whole row group: keep them batch-sized


def shard_ids(doc_ids: pa.Array, n_chunks: np.ndarray, fps: np.ndarray | None = None,
              tokens: np.ndarray | None = None) -> tuple[pa.Table, int]:
    """Sorted, unique ids of one shard with their chunk counts, fingerprints and tokens (the largest of each
    for a repeated id).

    Returns:
        ``(table, duplicates)``: duplicates = rows beyond the first of each repeated id.
    """
    n = len(doc_ids)
    table = pa.table({c.DOC_ID: doc_ids.cast(pa.string()), c.N_CHUNKS: pa.array(n_chunks, pa.int32()),
                      FP: pa.array(fps if fps is not None else np.zeros(n, np.uint64), pa.uint64()),
                      c.N_TOKENS: pa.array(tokens if tokens is not None else np.zeros(n, np.int64), pa.int64())})
    table = table.filter(pc.is_valid(table.column(c.DOC_ID)))
    grouped = table.group_by(c.DOC_ID).aggregate([(c.N_CHUNKS, "max"), (c.N_CHUNKS, "count"), (FP, "max"),
                                                  (c.N_TOKENS, "max")])
    duplicates = table.num_rows - grouped.num_rows
    out = pa.table({c.DOC_ID: grouped.column(c.DOC_ID), c.N_CHUNKS: grouped.column(f"{c.N_CHUNKS}_max"),
                    FP: grouped.column(f"{FP}_max"), c.N_TOKENS: grouped.column(f"{c.N_TOKENS}_max")},
                   schema=ID_SCHEMA)
    return out.sort_by(c.DOC_ID), duplicates


def write_table(fs: Any, path: str, table: pa.Table) -> None:
    """Write an id table as one parquet object (written whole: a kill never leaves half a file visible)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=FILE_ROW_GROUP)
    data = sink.getvalue().to_pybytes()
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
    if type(fs).__name__ == "LocalFileSystem":
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_table(fs: Any, path: str) -> pa.Table:
    """A whole id file (one shard's ids: bounded by the shard's size)."""
    with fs.open(path, "rb") as f:
        return pq.read_table(f, schema=SCHEMA)


def read_ids(fs: Any, path: str) -> pa.Table:
    """A whole id file with its fingerprints (:data:`ID_SCHEMA`; zeros where a file predates them)."""
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    for name in (FP, c.N_TOKENS):
        if name not in table.column_names:
            table = table.append_column(name, pa.array(np.zeros(table.num_rows, np.uint64 if name == FP else np.int64)))
    return table.select(ID_SCHEMA.names).cast(ID_SCHEMA)


def iter_batches(fs: Any, path: str, rows: int = BATCH_ROWS) -> Iterator[pa.Array]:
    """The ``doc_id`` column of a file, in sorted batches of at most ``rows``."""
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=[c.DOC_ID]):
            if batch.num_rows:
                yield batch.column(0)


def _merge(fs: Any, paths: Sequence[str], out: str | None, rows: int, repeated: list[pa.Array] | None = None) -> int:
    """Distinct ids of ``paths`` (each sorted and unique); written sorted to ``out`` when given; the ids found
    in more than one of the files appended to ``repeated`` when given."""
    streams = [iter_batches(fs, p, rows) for p in paths]
    arrays: list[pa.Array | None] = [next(s, None) for s in streams]
    values: list[list[str]] = [a.to_pylist() if a is not None else [] for a in arrays]
    pos = [0] * len(paths)  # ids of values[i] before pos[i] are merged already
    writer = pq.ParquetWriter(fs.open(out, "wb"), pa.schema([(c.DOC_ID, pa.string())]),
                              compression="zstd") if out else None
    distinct = 0
    try:
        while True:
            live = [i for i in range(len(paths)) if pos[i] < len(values[i])]
            if not live:
                break
            frontier = min(values[i][-1] for i in live)
            parts = []
            for i in live:
                cut = bisect.bisect_right(values[i], frontier, lo=pos[i])
                if cut > pos[i]:
                    parts.append(arrays[i].slice(pos[i], cut - pos[i]))  # type: ignore[union-attr]
                pos[i] = cut
                if cut == len(values[i]):  # this batch is merged: read the next one
                    arrays[i] = next(streams[i], None)
                    values[i] = arrays[i].to_pylist() if arrays[i] is not None else []
                    pos[i] = 0
            joined = pa.concat_arrays(parts)
            merged = pc.unique(joined)
            distinct += len(merged)
            if repeated is not None and len(merged) < len(joined):
                counts = pc.value_counts(joined)
                repeated.append(counts.field("values").filter(pc.greater(counts.field("counts"), 1)))
            if writer is not None:
                writer.write_table(pa.table({c.DOC_ID: merged.take(pc.sort_indices(merged))}))
    finally:
        if writer is not None:
            writer.close()
    return distinct


def distinct_count(fs: Any, paths: Sequence[str], scratch: str, *, fan_in: int = FAN_IN, rows: int = BATCH_ROWS,
                   run: Callable[[list[tuple[list[str], str]]], list[int]] | None = None,
                   repeated: list[pa.Array] | None = None) -> int:
    """How many different ids the files hold together (and, into ``repeated``, which ids more than one holds).

    Each file is unique, so an id counted twice in one merge is in two files; a merged
    intermediate file is unique again, so an id in two groups of a wide merge is found at the next
    level: the union over the levels is every id held by more than one file.

    Args:
        fs: The filesystem of the files.
        paths: Id files (sorted, unique each).
        scratch: Folder on ``fs`` for the intermediate files of wide merges (removed afterwards).
        fan_in: Files merged at once; memory is about ``fan_in x rows`` ids.
        rows: Ids read from a file at a time.
        run: Runs a level's merges ``[(paths, out), ...] -> [distinct, ...]``, e.g. as parallel Ray
            tasks; default: one after the other in this process (``repeated`` needs the default).
        repeated: When given, arrays of the ids held by more than one file are appended to it.
    """
    paths = list(paths)
    if len(paths) <= fan_in:
        return _merge(fs, paths, None, rows, repeated) if paths else 0
    level = [(paths[i:i + fan_in], f"{scratch}/merge-{uuid.uuid4().hex}.parquet") for i in range(0, len(paths), fan_in)]
    fs.makedirs(scratch, exist_ok=True)
    try:
        if run is None:
            for group, out in level:
                _merge(fs, group, out, rows, repeated)
        else:
            run([(list(g), o) for g, o in level])
        return distinct_count(fs, [o for _, o in level], scratch, fan_in=fan_in, rows=rows, run=run,
                              repeated=repeated)
    finally:
        for _, out in level:
            if fs.exists(out):
                fs.rm_file(out)


def merge_files(fs: Any, paths: list[str], out: str, rows: int = BATCH_ROWS) -> int:
    """One merge of a level (for ``distinct_count(run=...)`` callers that run merges elsewhere)."""
    return _merge(fs, paths, out, rows)


def locate(fs: Any, paths: Sequence[str], candidates: pa.Array, rows: int = BATCH_ROWS) -> pa.Table:
    """Where the candidates occur: ``doc_id``, ``file`` (index into ``paths``), ``n_chunks``, one row per hit
    (memory: the candidates, their hits and one batch)."""
    candidates = pc.unique(candidates.cast(pa.string()))
    parts = []
    for i, path in enumerate(paths):
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=[c.DOC_ID, c.N_CHUNKS]):
                hit = pc.is_in(batch.column(0), value_set=candidates)
                if pc.any(hit).as_py():
                    sel = pa.Table.from_batches([batch]).filter(hit)
                    parts.append(sel.append_column("file", pa.array(np.full(sel.num_rows, i, np.int32))))
    if not parts:
        return pa.table({c.DOC_ID: pa.array([], pa.string()), c.N_CHUNKS: pa.array([], pa.int32()),
                         "file": pa.array([], pa.int32())})
    return pa.concat_tables(parts)


def present(fs: Any, paths: Sequence[str], candidates: pa.Array, rows: int = BATCH_ROWS) -> pa.Array:
    """The candidates that occur in any of the files (memory: the candidates plus one batch)."""
    candidates = pc.unique(candidates.cast(pa.string()))
    if not len(candidates):
        return candidates
    found = np.zeros(len(candidates), dtype=bool)
    for path in paths:
        for batch in iter_batches(fs, path, rows):
            hit = pc.index_in(batch, value_set=candidates).drop_null()
            found[hit.to_numpy()] = True
            if found.all():
                return candidates
    return candidates.filter(pa.array(found))
