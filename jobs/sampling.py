"""What ``jobs.plan`` reads of a shard: a bounded part, with the job's readers, tokenized and counted as the job does.

* :func:`sample_shard` / :func:`sample_shards`: read a shard with the job's reader until a bound
  of text, spread over the file where the format allows (parquet: row groups in
  :func:`spread_order`; plain jsonl: pieces of the file in that order; jsonl.gz: from its first
  line), tokenize it with the job's tokenizer and chunking, count what the job's records count;
* :class:`ShardSample`: those counts, the bytes of the file they stand for, and
  :meth:`ShardSample.scaled`, the counts of the whole shard; where asked, the sampled documents'
  fingerprints as the read task computes them (:attr:`ShardSample.docs`), for
  :func:`jobs.estimate.compare_docs`.

Nothing here loads model weights, starts Ray or writes anything.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster import contract as c
from cluster.manifest.ids import FP
from cluster.settings import SourceConfig
from cluster.source import Shard, ShardError, open_shard, read_shard
from cluster.source.jsonl import read_jsonl
from cluster.stages.arrow import is_payload
from cluster.stages.read import DUPLICATE_ID, later_duplicates
from cluster.stages.tokenize import tokenize_table
from embedder.models.fingerprint import doc_fingerprints

if TYPE_CHECKING:
    from embedder.tokenize import TextTokenizer
    from jobs.config import JobConfig

READ_BATCH_ROWS = 16  # the sampler's batches: the byte bound is checked after each one
PARALLEL_FROM_BYTES = 32 << 20  # a smaller sample is read in this process: starting workers would cost more
PIECES = 8  # a shard over the bound is read in (at most about) PIECES places...
PIECE_MIN_BYTES = 1 << 12  # ...a plain jsonl piece being at least this many bytes
_BLOCK = 1 << 16


def spread_order(n: int) -> list[int]:
    """0..n-1 in van der Corput order (0, n/2, n/4, 3n/4, n/8, ...): any prefix is spread over the range."""
    seen: dict[int, None] = {}
    j = 0
    while len(seen) < n and j < 4 * n:
        frac, bit, x = 0.0, 0.5, j
        while x:
            frac += bit * (x & 1)
            x, bit = x >> 1, bit / 2
        seen.setdefault(int(frac * n), None)
        j += 1
    seen.update(dict.fromkeys(range(n)))
    return list(seen)


# ---- one shard ----------------------------------------------------------------------------------------
@dataclass
class ShardSample:
    """What was read of one shard, and what the job would make of it."""

    shard: Shard
    covered: float = 0.0  # bytes of the file the sample stands for (the size when read in full)
    complete: bool = False  # read to the end
    error: str | None = None  # the shard cannot be read (the job rejects it)
    seconds: float = 0.0
    tokenize_s: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    rows_total: int | None = None  # rows of the whole shard, where the file says (parquet)
    #: The sampled documents (read when a vector fingerprint was given): ``doc_id``, ``fp`` (as the read task
    #: computes it; 0 for a row it rejects before tokenizing), ``n_chunks`` and ``n_tokens`` (what it would embed).
    docs: pa.Table | None = None
    #: Whole-shard figures known better than by scaling the sample (:func:`jobs.estimate.from_id_file`): they
    #: replace the scaled counts of the same keys.
    whole: Counter[str] = field(default_factory=Counter)

    @property
    def scale(self) -> float:
        """File bytes per byte read: what one counted unit stands for."""
        if self.complete:
            return 1.0
        return self.shard.size / self.covered if self.covered > 0 else 0.0

    def scaled(self) -> Counter[str]:
        """The counts of the whole shard.

        Byte-bound counts (tokens, text, chunks beyond a document's first) scale by bytes. Where the
        file says how many rows it has (parquet), counts per document (documents, first chunks) scale
        by rows instead, and counts per chunk (keys, metadata, sparse weights) by the chunks that gives:
        a head of short titles and a tail of long manuals are then both counted right.
        """
        by_bytes = self.scale
        by_rows = by_bytes
        if not self.complete and self.rows_total is not None and self.counts["docs"]:
            by_rows = self.rows_total / self.counts["docs"]
        chunks = self.counts["chunks"]
        est_chunks = self.counts["docs_embedded"] * by_rows + (chunks - self.counts["docs_embedded"]) * by_bytes
        by_chunks = est_chunks / chunks if chunks else by_bytes
        out: Counter[str] = Counter()
        for key, value in self.counts.items():
            kind = key.rsplit(":", 1)[-1]
            factor = (by_rows if kind in PER_DOC else by_chunks if kind in PER_CHUNK else by_bytes)
            out[key] = value * factor
        for key, value in self.whole.items():
            out[key] = value
        return out


#: Counts per document and per chunk (the rest are per byte: tokens, text, ...); ``lang:<x>:<kind>`` too.
#: ``*_unchanged`` / ``*_changed`` / ``*_new`` / ``*_unknown``: :func:`jobs.estimate.compare_docs`.
DOC_KINDS = ("unchanged", "changed", "new", "unknown")
PER_DOC = frozenset({"docs", "docs_embedded", "docs_rejected", "docs_truncated", "duplicate_ids",
                     *(f"docs_{k}" for k in DOC_KINDS)})
PER_CHUNK = frozenset({"chunks", "pk_bytes", "doc_id_bytes", "fp_bytes", "metadata_bytes", "sparse_nnz",
                       *(f"chunks_{k}" for k in DOC_KINDS)})


def sample_shard(shard: Shard, cfg: JobConfig, tok: TextTokenizer, max_bytes: int,
                 vector_fp: str | None = None) -> ShardSample:
    """Read ``shard`` with the job's reader until ``max_bytes`` of text, tokenize it as the job does, count.

    With ``vector_fp`` (:func:`embedder.models.fingerprint.vector_fingerprint` of the run), the sampled
    documents' fingerprints are computed as the read task does and kept in :attr:`ShardSample.docs`.

    Reads are spread over the file where the format allows, so that a file sorted by length, date
    or kind is not judged by its head: parquet row group by row group in :func:`spread_order` (the
    first, the middle, the quarters...); plain jsonl in pieces of the file in the same order, each
    piece the lines that start in it, parsed by the job's jsonl reader. A jsonl.gz shard cannot be
    entered in the middle: it is read from its first line. The bound is checked after each batch
    (parquet) or piece (jsonl).
    """
    started = time.monotonic()
    out = ShardSample(shard)
    source = dataclasses.replace(cfg.source, read_batch_rows=min(cfg.source.read_batch_rows, READ_BATCH_ROWS))
    tables: list[pa.Table] = []
    text_bytes = 0
    try:
        if shard.format == "jsonl" and shard.size > max_bytes:
            tables, out.covered, out.complete = _jsonl_pieces(shard, source, max_bytes)
        elif shard.format == "parquet" and shard.size > 0:
            tables, out.covered, out.complete, out.rows_total = _parquet_pieces(shard, source, max_bytes)
        else:
            batches = read_shard(shard, source)
            out.complete = True
            for table in batches:
                tables.append(table.replace_schema_metadata(None))
                text_bytes += _text_bytes(table)
                if text_bytes >= max_bytes:
                    out.complete = next(batches, None) is None
                    batches.close()
                    break
    except ShardError as e:  # the job rejects the shard: it counts for nothing
        out.error, out.complete, tables = str(e), True, []
    if out.complete:
        out.covered = float(shard.size)
    elif shard.format == "jsonl.gz":
        rows = np.concatenate([t.column(c.ROW).to_numpy() for t in tables]) if tables else np.zeros(0, np.int64)
        try:
            out.covered = float(_jsonl_prefix_bytes(shard, source, int(rows.max()) + 1 if len(rows) else 0))
        except (ShardError, OSError, zlib.error):  # read once already: only a shard failing now lands here
            out.covered = float(shard.size)
    text_bytes = sum(_text_bytes(t) for t in tables)
    if tables:
        t0 = time.monotonic()
        out.counts, out.docs = _count(pa.concat_tables(tables, promote_options="permissive"), tok, cfg, vector_fp)
        out.tokenize_s = time.monotonic() - t0
    out.counts["text_bytes"] += text_bytes
    out.seconds = time.monotonic() - started
    return out


def _text_bytes(table: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(table.column(c.TEXT))).as_py() or 0)


def _jsonl_pieces(shard: Shard, source: SourceConfig, max_bytes: int) -> tuple[list[pa.Table], float, bool]:
    """Pieces of a plain jsonl file in :func:`spread_order`, until ``max_bytes`` of text; each piece is
    the lines that start in it, parsed by the job's jsonl reader (``_row``: the piece's first byte plus
    the line's number in it, unique across pieces). Returns the tables, the bytes read, and whether
    every piece was read."""
    piece = max(PIECE_MIN_BYTES, max_bytes // PIECES)
    slots = max(1, -(-shard.size // piece))
    metadata = list(dict.fromkeys(source.metadata_columns))
    tables: list[pa.Table] = []
    covered = text = 0
    read = 0
    with _open_for_pieces(shard, source, piece) as f:
        for slot in spread_order(slots):
            start, end = slot * piece, min(shard.size, (slot + 1) * piece)
            if start:
                f.seek(start - 1)
                f.readline()  # the line holding byte start-1 belongs to the piece before
            else:
                f.seek(0)
            first = f.tell()
            lines = []
            while f.tell() < end and (line := f.readline()):
                lines.append(line)
            read += 1
            covered += f.tell() - first if lines else 0
            if not lines:
                continue
            for table in read_jsonl(shard.path, "jsonl", io.BytesIO(b"".join(lines)), source, metadata):
                table = table.replace_schema_metadata(None)
                rows = pc.add(table.column(c.ROW), pa.scalar(first, pa.int64()))
                tables.append(table.set_column(table.schema.get_field_index(c.ROW), c.ROW, rows))
                text += _text_bytes(table)
            if text >= max_bytes:
                break
    return tables, float(covered), read == slots


def _parquet_pieces(shard: Shard, source: SourceConfig,
                    max_bytes: int) -> tuple[list[pa.Table], float, bool, int | None]:
    """Row groups in :func:`spread_order`, the first batches of each (an equal part of the bound, for at
    most PIECES of them), until ``max_bytes`` of text. Returns the tables, the bytes of the file they
    stand for, whether every row was read, and the file's rows. The share of the file the rows read
    stand for is their share of the text column's uncompressed bytes (the footer has them per row
    group), so that neither how well the text compresses nor how long the rows not read are counts."""
    groups = _row_groups(shard, source)
    if not groups:  # not a parquet file the footer can be read of: the job's reader says why
        tables = [t.replace_schema_metadata(None) for t in read_shard(shard, source)]
        return tables, float(shard.size), True, None
    starts = [g[0] for g in groups]
    tables: list[pa.Table] = []
    got = [0] * len(groups)  # rows read per row group
    got_bytes = [0] * len(groups)  # their text as the column's plain encoding counts it (4 + bytes each)
    text = 0
    total = sum(g[2] for g in groups)
    piece = max(1, max_bytes // min(PIECES, len(groups)))
    if total <= max_bytes or total / len(groups) <= piece:  # small row groups: whole ones, in one pass
        plan = [spread_order(len(groups))] if total > max_bytes else [list(range(len(groups)))]
    else:  # large ones: the first batches of each, one pass per row group
        plan = [[g] for g in spread_order(len(groups))]
    for row_groups in plan:
        batches = read_shard(shard, source, row_groups=row_groups)
        mine = 0
        for table in batches:
            tables.append(table.replace_schema_metadata(None))
            first = int(pc.min(table.column(c.ROW)).as_py())
            g = bisect.bisect_right(starts, first) - 1
            got[g] += table.num_rows
            got_bytes[g] += _text_bytes(table) + 4 * table.num_rows
            mine += _text_bytes(table)
            if (len(row_groups) == 1 and mine >= piece) or text + mine >= max_bytes:
                batches.close()
                break
        text += mine
        if text >= max_bytes:
            break
    rows = sum(g[1] for g in groups)
    if sum(got) >= rows:
        return tables, float(shard.size), True, rows
    part = 0.0
    for g, (_, n, size) in enumerate(groups):
        if got[g] >= n or not got[g]:
            part += size if got[g] else 0
        elif got_bytes[g] < size:  # the bytes read of the group's text, as the footer counts it
            part += got_bytes[g]
        else:  # a dictionary-encoded column counts fewer bytes than its values: by rows then
            part += size * got[g] / n
    return tables, shard.size * part / total if total else 0.0, False, rows


def _row_groups(shard: Shard, source: SourceConfig) -> list[tuple[int, int, int]]:
    """(first row, rows, uncompressed bytes of the text column, else of the row group) per row group."""
    try:
        with open_shard(shard, source) as f:
            meta = pq.ParquetFile(f).metadata
    except ShardError:
        raise
    except Exception:  # noqa: BLE001 - not parquet: read_shard says why, as the job would
        return []
    groups, first = [], 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        cols = [rg.column(j) for j in range(rg.num_columns)]
        text = [col.total_uncompressed_size for col in cols if col.path_in_schema == source.text_column]
        groups.append((first, rg.num_rows, text[0] if text else rg.total_byte_size))
        first += rg.num_rows
    return groups


def _open_for_pieces(shard: Shard, source: SourceConfig, piece: int) -> Any:
    """The shard opened as :func:`cluster.source.open_shard` does, with a read-ahead of about one piece
    (s3fs reads 5 MB ahead by default: per piece, on a large file, far more than the piece)."""
    from cluster.source import filesystem, retry
    from cluster.source.errors import storage_failure

    fs, path = filesystem(shard.path, source.storage_options)
    try:
        return retry(lambda: fs.open(path, "rb", block_size=max(piece + _BLOCK, 1 << 18)),
                     what=f"opening {shard.path}")
    except Exception as e:
        raise storage_failure(shard.path, e) or ShardError(shard.path, f"cannot open: {type(e).__name__}: {e}") from e


def sample_shards(shards: list[Shard], cfg: JobConfig, max_bytes: int, workers: int = 1,
                  vector_fps: list[str | None] | None = None) -> list[ShardSample]:
    """:func:`sample_shard` of each shard, in ``workers`` processes (each loads the tokenizer once);
    ``vector_fps``: per shard, the vector fingerprint to fingerprint its sampled documents with, or None."""
    fps = vector_fps if vector_fps is not None else [None] * len(shards)
    if workers <= 1 or len(shards) <= 1 or sum(min(s.size, max_bytes) for s in shards) < PARALLEL_FROM_BYTES:
        from cluster.stages.tokenize import get_tokenizer

        tok = get_tokenizer(cfg.model, cfg.chunking)
        return [sample_shard(s, cfg, tok, max_bytes, fp) for s, fp in zip(shards, fps)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(shards)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_sample_task, [(s, cfg, max_bytes, fp) for s, fp in zip(shards, fps)]))


def _sample_task(args: tuple[Shard, JobConfig, int, str | None]) -> ShardSample:
    from cluster.stages.tokenize import get_tokenizer

    shard, cfg, max_bytes, vector_fp = args
    return sample_shard(shard, cfg, get_tokenizer(cfg.model, cfg.chunking), max_bytes, vector_fp)


def _jsonl_prefix_bytes(shard: Shard, source: SourceConfig, lines: int) -> int:
    """Bytes of the file (compressed for jsonl.gz) that hold its first ``lines`` lines."""
    if lines <= 0:
        return 0
    seen = 0
    consumed = 0
    inflate = zlib.decompressobj(wbits=31) if shard.format == "jsonl.gz" else None
    with open_shard(shard, source) as f:
        while block := f.read(_BLOCK):
            data = block
            if inflate is not None:
                data = b""
                pending = block
                while pending:
                    data += inflate.decompress(pending)
                    pending = inflate.unused_data if inflate.eof else b""
                    if inflate.eof:
                        inflate = zlib.decompressobj(wbits=31)  # the next gzip member
            newlines = data.count(b"\n")
            if seen + newlines >= lines:
                pos = -1
                for _ in range(lines - seen):
                    pos = data.index(b"\n", pos + 1)
                return consumed + int(len(block) * (pos + 1) / max(len(data), 1))
            seen += newlines
            consumed += len(block)
    return consumed


def _count(table: pa.Table, tok: TextTokenizer, cfg: JobConfig,
           vector_fp: str | None = None) -> tuple[Counter[str], pa.Table | None]:
    """What the job's records count for these rows (:mod:`cluster.records`), plus storage figures; with
    ``vector_fp``, the documents' fingerprints, chunks and tokens (:attr:`ShardSample.docs`)."""
    counts: Counter[str] = Counter()
    counts["docs"] = table.num_rows
    losers = later_duplicates(table.column(c.DOC_ID).combine_chunks(), table.column(c.ROW).to_numpy())
    if losers:  # as the read task: earlier occurrences of an id are dead letters, the last one is embedded
        hit = pc.is_in(table.column(c.ROW), value_set=pa.array(list(losers), pa.int64()))
        table = table.set_column(table.schema.get_field_index(c.ERROR), c.ERROR,
                                 pc.if_else(hit, pa.scalar(DUPLICATE_ID), table.column(c.ERROR)))
        table = table.set_column(table.schema.get_field_index(c.TEXT), c.TEXT,
                                 pc.if_else(hit, pa.nulls(table.num_rows, pa.string()), table.column(c.TEXT)))
        counts["duplicate_ids"] = len(losers)
    fps = None
    if vector_fp is not None:  # as the read task: rows without an error (duplicates are error rows by now)
        payload = is_payload(table)
        fps = doc_fingerprints(vector_fp, [t if payload[i] else None
                                           for i, t in enumerate(table.column(c.TEXT).to_pylist())])
    out, _ = tokenize_table(table, tok, cfg.source.lang_column)
    chunk_index = pc.fill_null(out.column(c.CHUNK_INDEX), -1).to_numpy()
    ok = (chunk_index >= 0) & np.asarray(out.column(c.ERROR).is_null())
    first = ok & (chunk_index == 0)
    n_tokens = pc.fill_null(out.column(c.N_TOKENS), 0).to_numpy().astype(np.int64)
    counts["chunks"] = int(ok.sum())
    counts["docs_embedded"] = int(first.sum())
    counts["docs_rejected"] = table.num_rows - int(first.sum())
    counts["tokens"] = int(n_tokens[ok].sum())
    counts["tokens_sq"] = int((n_tokens[ok] ** 2).sum())  # for the attention cost: tokens weighted by length
    counts["chunks_at_limit"] = int((ok & (n_tokens >= tok.window)).sum())
    counts["docs_truncated"] = int((first & pc.fill_null(out.column(c.TRUNCATED), False).to_numpy(
        zero_copy_only=False)).sum())
    mask = pa.array(ok)
    chunks = out.filter(mask)
    text_len = pc.fill_null(pc.binary_length(chunks.column(c.TEXT)), 0).to_numpy().astype(np.int64)
    counts["chunk_text_bytes"] = int(np.minimum(text_len, cfg.milvus.text_max_length).sum())
    counts["doc_id_bytes"] = int(pc.sum(pc.binary_length(chunks.column(c.DOC_ID))).as_py() or 0)
    counts["pk_bytes"] = int(pc.sum(pc.binary_length(chunks.column(c.PK))).as_py() or 0)
    # embed_fp on every row: 16 hex digits, "/", the document's chunks, "/", its tokens
    rows = chunks.column(c.ROW).to_numpy()
    _, doc_of, doc_chunks = np.unique(rows, return_inverse=True, return_counts=True)
    doc_tokens = np.bincount(doc_of, weights=n_tokens[ok]).astype(np.int64)
    digits = np.char.str_len(doc_chunks.astype(str)) + np.char.str_len(doc_tokens.astype(str))
    counts["fp_bytes"] = int((18 + digits[doc_of]).sum())
    for col in cfg.source.metadata_columns:
        arr = chunks.column(col)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type):
            counts["metadata_bytes"] += int(pc.sum(pc.binary_length(arr)).as_py() or 0)
        else:
            counts["metadata_bytes"] += chunks.num_rows * (1 if pa.types.is_boolean(arr.type) else 8)
    counts["sparse_nnz"] = _sparse_nonzeros(chunks, tok, cfg.model.sparse_top_k)
    langs = pc.fill_null(chunks.column(c.LANG), "unknown").to_pylist()
    firsts = chunk_index[ok] == 0
    for lang, n, is_first in zip(langs, n_tokens[ok], firsts):
        counts[f"lang:{lang}:tokens"] += int(n)
        counts[f"lang:{lang}:chunks"] += 1
        counts[f"lang:{lang}:docs"] += int(is_first)
    docs = None
    if fps is not None:
        src = pc.index_in(out.column(c.ROW), value_set=table.column(c.ROW).combine_chunks())
        src = pc.fill_null(src, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        docs = pa.table({c.DOC_ID: table.column(c.DOC_ID).combine_chunks().cast(pa.string()),
                         FP: pa.array(fps, pa.uint64()),
                         c.N_CHUNKS: pa.array(np.bincount(src[ok], minlength=table.num_rows), pa.int32()),
                         c.N_TOKENS: pa.array(np.bincount(src[ok], weights=n_tokens[ok],
                                                          minlength=table.num_rows).astype(np.int64), pa.int64())})
    return counts, docs


def _sparse_nonzeros(chunks: pa.Table, tok: TextTokenizer, top_k: int | None) -> int:
    """Distinct non-special token ids per chunk (capped at ``top_k``): an upper bound of the sparse weights."""
    if not chunks.num_rows:
        return 0
    special = {getattr(tok.tok, f"{n}_token_id", None) for n in ("cls", "bos", "eos", "sep", "pad", "unk")}
    special.discard(None)
    ids = chunks.column(c.INPUT_IDS).combine_chunks()
    offsets = ids.offsets.to_numpy()
    values = ids.values.to_numpy().astype(np.int64)
    row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    keep = ~np.isin(values, np.fromiter(special, np.int64, len(special)))
    pairs = np.unique(row[keep] * (1 << 32) + values[keep])
    per_row = np.bincount(pairs >> 32, minlength=len(offsets) - 1)
    if top_k is not None:
        per_row = np.minimum(per_row, top_k)
    return int(per_row.sum())
