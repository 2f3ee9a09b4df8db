"""Per-shard id files and the set operations on them, with memory bounded by batches, not by documents.

Each finished shard has a parquet file of its document ids (``doc_id``, sorted, unique, compared
as the exact strings the reader produced) with ``n_chunks``: the rows the document has in Milvus
after the run (its new chunk count, or for a rejected document the count it had before), and
``fp`` / ``n_tokens``: the fingerprint of the version those rows hold and its tokens (0 / null
when unknown; files written before fingerprints existed lack both columns). The
read task that streamed the shard writes the file; the driver never holds ids.

Set operations stream the files:

* :func:`merged`: a k-way merge of sorted, unique files into one sorted, unique stream of
  batches (with the largest of a value column per id, and the ids held by more than one file),
  on Arrow arrays: no Python object per id. Each round takes, from every file's current batch,
  the ids up to the smallest of the batches' last ids (found by a vectorised compare: the batch
  is sorted) and sorts only those. At most ``fan_in`` files are read at once (memory about
  ``fan_in x rows`` ids); wider sets are merged in levels through sorted, unique scratch files,
  each level's groups as separate jobs (:class:`MergeJob`, :func:`merge_group`) that a caller
  may run as parallel tasks.
* :func:`distinct_count`: how many different ids a set of files holds. Files whose key ranges
  (their parquet min/max statistics) overlap no other file's are counted from their metadata
  and not merged at all. Cross-shard duplicates = sum of the files' sizes - distinct count.
* :func:`missing`: which of a set of candidate ids occur in none of a set of files, written to
  a file: candidates up to ``fan_in x rows`` are looked up in memory (one pass over the files);
  more are merged and joined with the merged files, sorted stream against sorted stream.
* :func:`present` / :func:`locate`: which of a (small) candidate set occur in any of the files,
  and where.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
IN_MEMORY = FAN_IN * BATCH_ROWS  # candidates looked up in memory by :func:`missing`; more are merged and joined
META_THREADS = 8  # parquet footers read at once (object storage: one request each)


def _local(fs: Any) -> bool:
    return type(fs).__name__ == "LocalFileSystem"


def _open(fs: Any, path: str, mode: str) -> Any:
    """A file of ``fs``; a local one through Arrow's own reader/writer (no Python call per read)."""
    if _local(fs):
        return pa.OSFile(path, mode[0])
    return fs.open(path, mode)


def _dictionary(schema: pa.Schema) -> list[str]:
    """Columns worth a dictionary: not the ids (unique: a dictionary makes the file larger and slower to read,
    3.5x and 2.4x for sequential ids), nor the fingerprints (random)."""
    return [name for name in schema.names if name not in (c.DOC_ID, FP)]


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
    pq.write_table(table, sink, compression="zstd", row_group_size=FILE_ROW_GROUP,
                   use_dictionary=_dictionary(table.schema))
    data = sink.getvalue().to_pybytes()
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
    if _local(fs):
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


def iter_batches(fs: Any, path: str, rows: int = BATCH_ROWS, columns: Sequence[str] = (c.DOC_ID,)
                 ) -> Iterator[pa.RecordBatch]:
    """``columns`` of a file (``doc_id`` first), in sorted batches of at most ``rows``, without null ids."""
    with _open(fs, path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=list(columns)):
            if batch.column(0).null_count:
                batch = batch.filter(pc.is_valid(batch.column(0)))
            if batch.num_rows:
                yield batch


# ---- the k-way merge, on Arrow arrays --------------------------------------------------------------
class _Cursor:
    """One sorted, unique input: its current batch, how much of it is merged, its first unmerged and last id
    (Python strings once per batch and per cut, never per id; str order is UTF-8 byte order, Arrow's)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self.batches = batches
        self.batch: pa.RecordBatch | None = None
        self.pos, self.first, self.last = 0, "", ""
        self._advance()

    def _advance(self) -> None:
        self.batch = next((b for b in self.batches if b.num_rows), None)
        if self.batch is not None:
            ids = self.batch.column(0)
            self.pos, self.first, self.last = 0, ids[0].as_py(), ids[-1].as_py()

    def take(self, frontier: str) -> pa.RecordBatch | None:
        """The unmerged rows up to ``frontier`` (included); the next batch is read once this one is merged."""
        batch = self.batch
        if batch is None or self.first > frontier:
            return None
        n = batch.num_rows
        if self.last <= frontier:
            cut = n
        else:  # the batch is sorted: the ids <= frontier are a prefix of the unmerged rest
            rest = batch.column(0).slice(self.pos)
            cut = self.pos + int(pc.sum(pc.less_equal(rest, pa.scalar(frontier, pa.string()))).as_py() or 0)
        part = batch.slice(self.pos, cut - self.pos)
        if cut >= n:
            self._advance()
        else:
            self.pos, self.first = cut, batch.column(0)[cut].as_py()
        return part


def _rounds(sources: Sequence[Iterator[pa.RecordBatch]]) -> Iterator[list[pa.RecordBatch | None]]:
    """Per round, each source's rows up to the smallest last id of the current batches (``None`` where it has
    none). Rounds cover ascending, disjoint key ranges; each consumes at least one whole batch."""
    cursors = [_Cursor(s) for s in sources]
    while True:
        live = [cu for cu in cursors if cu.batch is not None]
        if not live:
            return
        frontier = min(cu.last for cu in live)
        yield [cu.take(frontier) for cu in cursors]


def _first_of_runs(ids: pa.Array) -> pa.Array:
    """For a sorted array: True where an id differs from the one before it."""
    if len(ids) < 2:
        return pa.array(np.ones(len(ids), bool))
    same = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    return pa.concat_arrays([pa.array([True]), pc.invert(same)])


def _collapse(parts: list[pa.RecordBatch], value: str | None) -> tuple[pa.RecordBatch, pa.Array | None]:
    """A round's rows sorted and unique (the largest ``value`` per id), and the ids in more than one part."""
    if len(parts) == 1:  # one file's rows: sorted and unique already
        return parts[0], None
    joined = pa.RecordBatch.from_arrays([pa.concat_arrays([p.column(i) for p in parts])
                                         for i in range(parts[0].num_columns)], schema=parts[0].schema)
    keys = [(c.DOC_ID, "ascending", "at_end")] + ([(value, "descending", "at_end")] if value else [])
    joined = joined.take(pc.sort_indices(joined, sort_keys=keys))  # the largest value first in each run
    ids = joined.column(0)
    first = _first_of_runs(ids)
    out = joined.filter(first)
    if out.num_rows == joined.num_rows:
        return out, None
    repeated = ids.filter(pc.invert(first))  # an id in k parts appears k - 1 times: keep it once
    return out, repeated.filter(_first_of_runs(repeated))


def _merge_stream(sources: Sequence[Iterator[pa.RecordBatch]], value: str | None,
                  on_repeated: Callable[[pa.Array], None] | None) -> Iterator[pa.RecordBatch]:
    for taken in _rounds(sources):
        parts = [t for t in taken if t is not None and t.num_rows]
        if not parts:
            continue
        batch, repeated = _collapse(parts, value)
        if repeated is not None and on_repeated is not None:
            on_repeated(repeated)
        yield batch


def _read(fs: Any, path: str, rows: int, value: str | None) -> Iterator[pa.RecordBatch]:
    """A file's ``doc_id`` (and ``value``) in batches of :func:`_schema` (whatever types or metadata it has)."""
    schema = _schema(value)
    for batch in iter_batches(fs, path, rows, schema.names):
        yield pa.RecordBatch.from_arrays([batch.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


class _Writer:
    """Sorted batches into one parquet file, in row groups of about :data:`FILE_ROW_GROUP` rows."""

    def __init__(self, fs: Any, path: str, schema: pa.Schema) -> None:
        self.fs, self.path, self.schema = fs, path, schema
        self.file: Any = None
        self.writer: pq.ParquetWriter | None = None
        self.buffer: list[pa.RecordBatch] = []
        self.buffered = self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Array) -> None:
        if isinstance(batch, pa.Array):
            batch = pa.RecordBatch.from_arrays([batch], schema=self.schema)
        if not batch.num_rows:
            return
        self.buffer.append(batch)
        self.buffered += batch.num_rows
        self.rows += batch.num_rows
        if self.buffered >= FILE_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.writer is None:
            self.file = _open(self.fs, self.path, "wb")
            self.writer = pq.ParquetWriter(self.file, self.schema, compression="zstd",
                                           use_dictionary=_dictionary(self.schema))
        if self.buffer:
            self.writer.write_table(pa.Table.from_batches(self.buffer, schema=self.schema),
                                    row_group_size=max(self.buffered, 1))
        self.buffer, self.buffered = [], 0

    def close(self, always: bool = True) -> None:
        """Write what is buffered and close; with ``always`` false, a file with no rows is not created."""
        if always or self.rows:
            self._flush()
        if self.writer is not None:
            self.writer.close()
            self.file.close()


def _schema(value: str | None) -> pa.Schema:
    return pa.schema([(c.DOC_ID, pa.string())] + ([(value, SCHEMA.field(value).type)] if value else []))


@dataclass(frozen=True)
class MergeJob:
    """One merge of a level: sorted, unique ``paths`` into the sorted, unique file ``out`` (with the largest
    ``value`` per id), and the ids held by more than one of them into ``repeated`` (a file, made only when
    there are any)."""

    paths: list[str]
    out: str
    value: str | None = None
    repeated: str | None = None
    rows: int = BATCH_ROWS


def merge_group(fs: Any, job: MergeJob) -> tuple[int, int]:
    """Run one :class:`MergeJob` here; returns ``(distinct ids, repeated ids)``. Memory: about
    ``len(job.paths) x job.rows`` ids."""
    out = _Writer(fs, job.out, _schema(job.value))
    rep = _Writer(fs, job.repeated, _schema(None)) if job.repeated else None
    try:
        for batch in _merge_stream([_read(fs, p, job.rows, job.value) for p in job.paths], job.value,
                                   rep.write if rep is not None else None):
            out.write(batch)
    finally:
        out.close()
        if rep is not None:
            rep.close(always=False)
    return out.rows, rep.rows if rep is not None else 0


Runner = Callable[[list[MergeJob]], list[tuple[int, int]]]


def _groups(paths: list[str], fan_in: int, parallel: int) -> list[list[str]]:
    """``paths`` split into consecutive groups of nearly equal size, at most ``fan_in`` each; at least
    ``parallel`` groups (of two files or more) when there are that many runners, but never more than
    ``fan_in`` unless needed (more groups would add a level)."""
    n = math.ceil(len(paths) / fan_in)
    n = max(n, min(parallel, len(paths) // 2, fan_in))
    size, extra = divmod(len(paths), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(paths[start:end])
        start = end
    return out


@contextlib.contextmanager
def merged(fs: Any, paths: Sequence[str], scratch: str, *, fan_in: int = FAN_IN, rows: int = BATCH_ROWS,
           value: str | None = None, run: Runner | None = None, parallel: int = 1,
           repeated: list[pa.Array] | None = None) -> Iterator[Iterator[pa.RecordBatch]]:
    """The sorted, unique ids of ``paths`` (each sorted and unique), as a stream of batches.

    With more than ``fan_in`` files, levels of merges run first (on entering), each group into a
    scratch file; the last level is merged as the stream is read. Scratch files are removed on leaving.

    Args:
        fs: The filesystem of the files.
        paths: Id files (sorted, unique each).
        scratch: Folder on ``fs`` for the levels' files.
        fan_in: Files merged at once; memory is about ``fan_in x rows`` ids (per merge job).
        rows: Ids read from a file at a time.
        value: A column carried along, its largest value per id (e.g. ``n_chunks``).
        run: Runs a level's jobs ``[MergeJob, ...] -> [(distinct, repeated), ...]``, e.g. as parallel Ray
            tasks; default: one after the other here.
        parallel: How many jobs ``run`` runs at once (a level gets at least that many groups).
        repeated: When given, the ids held by more than one file are appended to it (each id found at
            the level where its files meet; an id may be appended more than once).
    """
    paths, made = list(paths), []
    try:
        while len(paths) > fan_in:
            fs.makedirs(scratch, exist_ok=True)
            jobs = []
            for group in _groups(paths, fan_in, parallel if run is not None else 1):
                name = f"{scratch}/merge-{uuid.uuid4().hex}"
                jobs.append(MergeJob(group, f"{name}.parquet", value,
                                     f"{name}.repeated.parquet" if repeated is not None else None, rows))
                made += [jobs[-1].out] + ([jobs[-1].repeated] if repeated is not None else [])
            results = run(jobs) if run is not None else [merge_group(fs, job) for job in jobs]
            if repeated is not None:
                for job, (_, n_repeated) in zip(jobs, results, strict=True):
                    if n_repeated:
                        repeated.append(read_table_ids(fs, job.repeated))  # type: ignore[arg-type]
            paths = [job.out for job in jobs]
        yield _merge_stream([_read(fs, p, rows, value) for p in paths], value,
                            repeated.append if repeated is not None else None)
    finally:
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                if fs.exists(path):
                    fs.rm_file(path)


def read_table_ids(fs: Any, path: str) -> pa.Array:
    """The ``doc_id`` column of a file, whole."""
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=[c.DOC_ID]).column(0).combine_chunks()


# ---- what the files' metadata tells ----------------------------------------------------------------
@dataclass(frozen=True)
class FileRange:
    """An id file's rows and its smallest and largest id."""

    path: str
    rows: int
    low: str | None  # None: unknown (no statistics): may overlap anything
    high: str | None


def file_ranges(fs: Any, paths: Sequence[str]) -> list[FileRange]:
    """Rows and smallest / largest id of each file, from its parquet footer (read :data:`META_THREADS` at a
    time). A file that is gone raises ``FileNotFoundError``."""

    def one(path: str) -> FileRange:
        with _open(fs, path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        low = high = None
        known = meta.num_row_groups > 0
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if not rg.num_rows:
                continue
            st = rg.column(0).statistics
            if st is None or not st.has_min_max:
                known = False
                break
            low = st.min if low is None or st.min < low else low
            high = st.max if high is None or st.max > high else high
        if not known or low is None or not isinstance(low, str):
            low = high = None
        return FileRange(path, meta.num_rows, low, high)

    if len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(min(META_THREADS, len(paths))) as pool:
        return list(pool.map(one, paths))


def _apart(ranges: Sequence[FileRange]) -> tuple[list[FileRange], list[FileRange]]:
    """``(alone, together)``: files whose key range overlaps no other file's (or that are empty), and the
    rest, ordered by their smallest id (files of a cluster of overlapping ranges next to each other)."""
    empty = [r for r in ranges if not r.rows]
    unknown = [r for r in ranges if r.rows and r.low is None]
    known = sorted((r for r in ranges if r.rows and r.low is not None), key=lambda r: r.low or "")
    clusters: list[list[FileRange]] = []
    high = None
    for r in known:
        if clusters and high is not None and r.low is not None and r.low <= high:
            clusters[-1].append(r)
            high = max(high, r.high or "")
        else:
            clusters.append([r])
            high = r.high
    alone = empty + [cl[0] for cl in clusters if len(cl) == 1]
    together = [r for cl in clusters if len(cl) > 1 for r in cl]
    if unknown:  # a file of unknown range may meet any other
        together = unknown + [r for cl in clusters for r in cl]
        alone = empty
    return alone, together


def distinct_count(fs: Any, paths: Sequence[str], scratch: str, *, fan_in: int = FAN_IN, rows: int = BATCH_ROWS,
                   run: Runner | None = None, parallel: int = 1, repeated: list[pa.Array] | None = None) -> int:
    """How many different ids the files hold together (and, into ``repeated``, which ids more than one holds).

    Each file is unique, so an id counted twice in one merge is in two files; a merged
    intermediate file is unique again, so an id in two groups of a wide merge is found at the next
    level: the union over the levels is every id held by more than one file. A file whose key
    range overlaps no other file's shares no id with any: it is counted from its footer, not read.

    Args: as :func:`merged`.
    """
    alone, together = _apart(file_ranges(fs, list(paths)))
    distinct = sum(r.rows for r in alone)
    if len(together) == 1:  # one file of unknown range and no other: unique already
        return distinct + together[0].rows
    if together:
        with merged(fs, [r.path for r in together], scratch, fan_in=fan_in, rows=rows, run=run, parallel=parallel,
                    repeated=repeated) as stream:
            distinct += sum(b.num_rows for b in stream)
    return distinct


# ---- candidates against the files -----------------------------------------------------------------
def _join_missing(candidates: Iterator[pa.RecordBatch], present_ids: Iterator[pa.RecordBatch]
                  ) -> Iterator[pa.RecordBatch]:
    """The candidate rows whose id is not in ``present_ids`` (both sorted, unique streams; the second is read
    only as far as the first goes)."""
    cand, have = _Cursor(candidates), _Cursor(present_ids)
    while cand.batch is not None:
        frontier = cand.last if have.batch is None else min(cand.last, have.last)
        mine, theirs = cand.take(frontier), have.take(frontier)
        if mine is None or not mine.num_rows:
            continue
        if theirs is None or not theirs.num_rows:
            yield mine
        else:
            yield mine.filter(pc.invert(pc.is_in(mine.column(0), value_set=theirs.column(0))))


def missing(fs: Any, candidates: Sequence[str], files: Sequence[str], out: str, scratch: str, *,
            fan_in: int = FAN_IN, rows: int = BATCH_ROWS, in_memory: int = IN_MEMORY, run: Runner | None = None,
            parallel: int = 1) -> int:
    """Write to ``out`` the candidate ids (with their largest ``n_chunks``) that none of ``files`` holds; returns
    how many. ``candidates`` and ``files`` are sorted, unique id files; ``out`` is sorted and unique.

    Candidates are merged (an id in several candidate files once, with its largest count). Up to
    ``in_memory`` candidate rows are looked up in memory in one pass over ``files``; more are joined with
    the merged ``files``, sorted stream against sorted stream. Memory: about ``max(in_memory, fan_in x rows)``
    ids either way.
    """
    rows_in = sum(r.rows for r in file_ranges(fs, list(candidates)))
    fs.makedirs(out.rsplit("/", 1)[0], exist_ok=True)
    writer = _Writer(fs, out, _schema(c.N_CHUNKS))
    try:
        with merged(fs, candidates, scratch, fan_in=fan_in, rows=rows, value=c.N_CHUNKS, run=run,
                    parallel=parallel) as cands:
            if rows_in <= in_memory:
                table = pa.Table.from_batches(list(cands), schema=_schema(c.N_CHUNKS))
                found = present(fs, files, table.column(c.DOC_ID).combine_chunks(), rows)
                gone = table.filter(pc.invert(pc.is_in(table.column(c.DOC_ID), value_set=found)))
                for batch in gone.combine_chunks().to_batches():
                    writer.write(batch)
            else:
                with merged(fs, files, scratch, fan_in=fan_in, rows=rows, run=run, parallel=parallel) as have:
                    for batch in _join_missing(cands, have):
                        writer.write(batch)
    finally:
        writer.close()
    return writer.rows


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
            hit = pc.index_in(batch.column(0), value_set=candidates).drop_null()
            found[hit.to_numpy()] = True
            if found.all():
                return candidates
    return candidates.filter(pa.array(found))
