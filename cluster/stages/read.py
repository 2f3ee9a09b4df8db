"""Stage 1 (CPU tasks, one shard per task): read, tokenize, and account for the shard's ids.

A task streams its shard batch by batch: rows are checked, tokenized and windowed into chunk
rows (:mod:`cluster.stages.tokenize`) and yielded at once. Since the task sees every document
of its shard, it also:

* keeps one row per document id: when an id repeats inside the shard, the last occurrence is
  embedded and the earlier ones become ``duplicate_id`` error rows (dead-lettered), so that no
  request ever carries one primary key twice (a Milvus 2.6 server refuses that, code 1100);
  this costs a first pass over the shard that keeps only its ids and row numbers;
* casts the metadata columns to the collection's field types; a value that does not convert
  (a string in an INT64 field) becomes an error row naming the column, never a refused request;
* skips documents whose rows already hold exactly what it would embed (same fingerprint: see
  :mod:`cluster.stages.unchanged`), counting their chunks and tokens instead of embedding them;
  every other chunk row carries its document's ``embed_fp`` into the collection;
* tags each document with the chunk count it had when the shard was last recorded
  (``_prev_chunks``), so that writers delete only the stale tails of documents that shrank;
* writes the shard's id file (sorted ids with chunk counts) and, when documents left the
  shard, a pending-delete file, into the manifest's storage (never through the driver);
* ends the shard with a marker row: the documents it held, the shard-level error if reading
  failed, and a small JSON summary (within-shard duplicate ids, id kinds, the id file).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c
from cluster.settings import SourceConfig
from cluster.source import Shard, ShardError, read_shard
from cluster.source.row_checks import ID_KINDS
from cluster.stages.arrow import is_payload
from cluster.stages.tokenize import get_tokenizer, tokenize_table
from cluster.stages.unchanged import ChangeCheck, fingerprint_column, stored_unchanged
from embedder.models.fingerprint import doc_fingerprints
from embedder.settings import ChunkingConfig, ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdsSink:
    """Where read tasks put id files: the manifest folder of the run's identity."""

    uri: str
    storage_options: dict[str, Any]


def shard_items(shards: list[Shard], prev_ids: dict[str, str | None], ids_out: dict[str, str],
                pending_out: dict[str, str], repair: dict[str, str] | None = None) -> list[dict[str, object]]:
    """The items the read stage starts from: one per shard, with where its id files are (relative paths);
    ``repair``: shard path -> the file of the ids whose version in that shard is to be written again."""
    return [{"path": s.path, "format": s.format, "size": s.size, "version": s.version,
             "prev_ids": prev_ids.get(s.path), "ids_out": ids_out.get(s.path), "pending_out": pending_out.get(s.path),
             "repair": (repair or {}).get(s.path)}
            for s in shards]


TASKS_PER_CPU = 4  # read tasks per CPU of the cluster, at least, when the corpus can be cut that fine


def group_items(items: list[dict[str, object]], *, max_bytes: int, cpus: float) -> list[dict[str, str]]:
    """Rows of the read stage: each holds consecutive shard items (JSON) of together at most ``target`` bytes,
    ``target = min(max_bytes, total / (TASKS_PER_CPU * cpus))``; a shard larger than that is a row of its own.

    A million tiny files become thousands of read tasks instead of a million, while a small corpus
    still spreads over every CPU. Order is kept, and every item is in exactly one row.
    """
    total = sum(int(i.get("size") or 0) for i in items)  # type: ignore[call-overload]
    target = max(1, min(max_bytes, int(total / max(1.0, TASKS_PER_CPU * cpus))))
    rows: list[dict[str, str]] = []
    group: list[dict[str, object]] = []
    size = 0
    for item in items:
        n = int(item.get("size") or 0)  # type: ignore[call-overload]
        if group and size + n > target:
            rows.append({"shards": json.dumps(group)})
            group, size = [], 0
        group.append(item)
        size += n
    if group:
        rows.append({"shards": json.dumps(group)})
    return rows


def read_and_tokenize(batch: pa.Table, *, source: SourceConfig, model: ModelConfig, chunking: ChunkingConfig,
                      lang_column: str | None = None, ids: IdsSink | None = None, progress: Any = None,
                      metadata_types: dict[str, pa.DataType] | None = None,
                      change: ChangeCheck | None = None) -> Iterator[pa.Table]:
    """Chunk rows of every shard in ``batch`` (rows of :func:`group_items`, or items of :func:`shard_items`), each
    shard closed by its marker."""
    for row in batch.to_pylist():
        for item in (json.loads(row["shards"]) if "shards" in row else [row]):
            yield from ShardReader(item, source, model, chunking, lang_column, ids, progress, metadata_types,
                                   change).run()


DUPLICATE_ID = "duplicate_id"  # the reason of a row whose id a later row of the same shard repeats


def later_duplicates(doc_ids: pa.Array, rows: np.ndarray) -> dict[int, int]:
    """Rows whose id a later row repeats, mapped to the row that wins (the last occurrence)."""
    table = pa.table({"id": doc_ids, "row": pa.array(rows, pa.int64())}).filter(pc.is_valid(doc_ids))
    grouped = table.group_by("id").aggregate([("row", "max"), ("row", "count")])
    repeated = grouped.filter(pc.greater(grouped.column("row_count"), 1))
    if not repeated.num_rows:
        return {}
    winner = dict(zip(repeated.column("id").to_pylist(), repeated.column("row_max").to_pylist()))
    mine = table.filter(pc.is_in(table.column("id"), value_set=repeated.column("id")))
    return {r: winner[i] for i, r in zip(mine.column("id").to_pylist(), mine.column("row").to_pylist())
            if r != winner[i]}


def cast_metadata(table: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    """The metadata columns as the collection's types; a value that does not convert becomes a row error.

    The collection's metadata fields take their types from the first shard; a later shard whose
    column holds another type (``"unknown"`` in an INT64 field) would otherwise be refused by
    Milvus request after request, on every re-run.
    """
    names = [n for n in types if n in table.column_names]
    strings = [n for n in names if pa.types.is_string(types[n]) and pa.types.is_string(table.schema.field(n).type)]
    long = {n: pc.fill_null(pc.greater(pc.binary_length(table.column(n)), c.VARCHAR_MAX_BYTES), False).to_numpy(
        zero_copy_only=False) for n in strings}
    long = {n: m for n, m in long.items() if m.any()}
    if not long and all(table.schema.field(n).type == types[n] for n in names):
        return table
    errors = table.column(c.ERROR).to_pylist()
    for name, mask in long.items():
        for i in np.flatnonzero(mask):
            why = (f"metadata {name!r} is longer than the {c.VARCHAR_MAX_BYTES} bytes a VARCHAR field holds; "
                   "shorten it or drop the column from source.metadata_columns")
            errors[i] = why if errors[i] is None else f"{errors[i]}; {why}"
        col = pc.if_else(pa.array(mask), pa.nulls(table.num_rows, table.schema.field(name).type), table.column(name))
        table = table.set_column(table.schema.get_field_index(name), name, col)
    for name in names:
        tp = types[name]
        if table.schema.field(name).type == tp:
            continue
        col = table.column(name)
        try:
            cast = pc.cast(col, tp, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = []
            for i, v in enumerate(col.to_pylist()):
                try:
                    values.append(pc.cast(pa.array([v], col.type), tp, safe=True)[0].as_py())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    values.append(None)
                    why = (f"metadata {name!r} is {col.type} {v!r}, which does not convert to the collection's "
                           f"{tp} field; fix the value or drop the column from source.metadata_columns")
                    errors[i] = why if errors[i] is None else f"{errors[i]}; {why}"
            cast = pa.array(values, tp)
        table = table.set_column(table.schema.get_field_index(name), name, cast)
    bad = pa.array([e is not None for e in errors])
    table = table.set_column(table.schema.get_field_index(c.ERROR), c.ERROR, pa.array(errors, pa.string()))
    return table.set_column(table.schema.get_field_index(c.TEXT), c.TEXT,
                            pc.if_else(bad, pa.nulls(table.num_rows, pa.string()), table.column(c.TEXT)))


class ShardReader:
    """Reads one shard into chunk rows and accounts for its ids (one task, one shard)."""

    def __init__(self, item: dict[str, Any], source: SourceConfig, model: ModelConfig, chunking: ChunkingConfig,
                 lang_column: str | None, ids: IdsSink | None, progress: Any,
                 metadata_types: dict[str, pa.DataType] | None = None, change: ChangeCheck | None = None) -> None:
        self.item, self.source, self.lang_column, self.progress = item, source, lang_column, progress
        self.change = change
        self.metadata_types = {k: v for k, v in (metadata_types or {}).items() if isinstance(v, pa.DataType)}
        self.shard = Shard(path=item["path"], format=item["format"], size=item["size"], version=item["version"])
        self.tok = get_tokenizer(model, chunking)
        self.store = None
        if ids is not None:
            from cluster.manifest.store import Store

            self.store = Store(ids.uri, ids.storage_options)
        self.prev = self._previous_ids()
        self.repair = self._repair_ids()  # a repair pass: only these ids, with these earlier chunk counts
        self.kinds: set[str] = set()
        self.id_parts: list[pa.Array] = []
        self.count_parts: list[np.ndarray] = []
        self.fp_parts: list[np.ndarray] = []
        self.token_parts: list[np.ndarray] = []
        self.unchanged = {"unchanged": 0, "chunks_unchanged": 0, "tokens_skipped": 0}
        self.schema: pa.Schema | None = None
        self.losers: dict[int, int] = {}  # row -> the later row of the same id, which is embedded instead
        self.loser_rows = np.zeros(0, np.int64)

    def _previous_ids(self) -> pa.Table | None:
        if self.store is None or not self.item.get("prev_ids"):
            return None
        from cluster.manifest.ids import read_ids

        try:
            return read_ids(self.store.fs, self.store.path(self.item["prev_ids"]))
        except FileNotFoundError:
            log.warning("the id file %s of %s is gone; its documents count as new", self.item["prev_ids"],
                        self.shard.path)
            return None

    def _repair_ids(self) -> pa.Table | None:
        if self.store is None or not self.item.get("repair"):
            return None
        from cluster.manifest.ids import read_table

        return read_table(self.store.fs, self.store.path(self.item["repair"]))

    def run(self) -> Iterator[pa.Table]:
        docs, error = 0, None
        try:
            self.losers = self._find_duplicates()
            self.loser_rows = np.fromiter(self.losers, np.int64, len(self.losers))
            for table in read_shard(self.shard, self.source):
                kinds = (table.schema.metadata or {}).get(ID_KINDS.encode())
                if kinds:
                    self.kinds.update(kinds.decode().split(","))
                table = table.replace_schema_metadata(None)
                self.schema = table.schema
                out = self._tokenize(table)
                docs += table.num_rows
                if self.progress is not None:
                    self.progress.add(docs_read=table.num_rows, chunks_tokenized=int(out.num_rows))
                yield out
        except ShardError as e:
            log.warning("%s", e)
            error = str(e)
        info: dict[str, Any] = {"id_kinds": sorted(self.kinds), "duplicates": len(self.losers), **self.unchanged}
        if error is None:
            info.update(self._write_ids())
        yield self._end_marker(docs, error, info)

    def _find_duplicates(self) -> dict[int, int]:
        """A first pass over the shard, keeping ids and row numbers only: rows a later row repeats."""
        ids, rows = [], []
        for table in read_shard(self.shard, self.source):
            ids.append(table.column(c.DOC_ID).combine_chunks())
            rows.append(table.column(c.ROW).to_numpy())
        if not ids:
            return {}
        return later_duplicates(pa.concat_arrays(ids), np.concatenate(rows))

    def _mark_duplicates(self, table: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """Earlier occurrences of a repeated id become error rows; returns the table and the mask of them."""
        rows = table.column(c.ROW).to_numpy()
        hit = np.isin(rows, self.loser_rows) if self.losers else np.zeros(len(rows), bool)
        if not hit.any():
            return table, hit
        errors = table.column(c.ERROR).to_pylist()
        for i in np.flatnonzero(hit):
            why = (f"{DUPLICATE_ID}: row {self.losers[int(rows[i])]} of this shard has the same id; the last "
                   "occurrence is embedded")
            errors[i] = why if errors[i] is None else f"{errors[i]}; {why}"
        table = table.set_column(table.schema.get_field_index(c.ERROR), c.ERROR, pa.array(errors, pa.string()))
        table = table.set_column(table.schema.get_field_index(c.TEXT), c.TEXT,
                                 pc.if_else(pa.array(hit), pa.nulls(table.num_rows, pa.string()),
                                            table.column(c.TEXT)))
        return table, hit

    def _tokenize(self, table: pa.Table) -> pa.Table:
        if self.metadata_types:
            table = cast_metadata(table, self.metadata_types)
        table, repeated = self._mark_duplicates(table)
        if self.repair is not None:  # only the ids this shard's version wins, their longest earlier count
            table = table.filter(pa.array(~repeated) if repeated.any() else pc.is_valid(table.column(c.DOC_ID)))
            table = table.filter(pc.fill_null(pc.is_in(table.column(c.DOC_ID),
                                                       value_set=self.repair.column(c.DOC_ID)), False))
            repeated = np.zeros(table.num_rows, bool)
            where = pc.index_in(table.column(c.DOC_ID), value_set=self.repair.column(c.DOC_ID))
            prev = pc.take(self.repair.column(c.N_CHUNKS), where).combine_chunks()
            prev_fp, prev_tokens = np.zeros(table.num_rows, np.uint64), np.zeros(table.num_rows, np.int64)
        else:
            prev, prev_fp, prev_tokens = self._prev_columns(table.column(c.DOC_ID))
        fps = np.zeros(table.num_rows, np.uint64)
        if self.change is not None:
            docs = is_payload(table) & ~repeated
            texts = table.column(c.TEXT).to_pylist()
            fps = doc_fingerprints(self.change.vector_fp, [t if docs[i] else None for i, t in enumerate(texts)])
            if self.repair is None:  # a repair writes its ids whatever they hold
                skip = self._skip_unchanged(table, fps, prev, prev_fp, prev_tokens)
                if skip.any():
                    keep = pa.array(~skip)
                    table, prev = table.filter(keep), prev.filter(keep)
                    fps, prev_fp, prev_tokens, repeated = fps[~skip], prev_fp[~skip], prev_tokens[~skip], \
                        repeated[~skip]
        table = table.append_column(c.PREV_CHUNKS, prev).append_column(c.SHARD_END, pa.nulls(table.num_rows,
                                                                                            pa.int64()))
        out, per_row = tokenize_table(table, self.tok, self.lang_column)
        is_chunk = pc.is_valid(out.column(c.CHUNK_INDEX)).to_numpy(zero_copy_only=False)
        src = pc.index_in(out.column(c.ROW), value_set=table.column(c.ROW).combine_chunks())
        src = src.to_numpy(zero_copy_only=False)
        src = np.where(is_chunk, src, 0).astype(np.int64)
        row_tokens = np.bincount(src[is_chunk], weights=out.column(c.N_TOKENS).to_numpy()[is_chunk],
                                 minlength=table.num_rows).astype(np.int64)
        # The id file keeps, per document, the rows it has in Milvus after this run: its new chunk
        # count, fingerprint and tokens, or (rejected now) what it had before.
        embedded = per_row > 0
        counts = np.where(embedded, per_row, pc.fill_null(prev, 0).to_numpy(zero_copy_only=False)).astype(np.int32)
        keep = ~repeated  # an earlier occurrence is not the document: its id is accounted for by the last one
        self._add_ids(table.column(c.DOC_ID).combine_chunks().filter(pa.array(keep)), counts[keep],
                      np.where(embedded, fps, prev_fp)[keep], np.where(embedded, row_tokens, prev_tokens)[keep])
        out = out.append_column(c.EMBED_FP, pa.array(fingerprint_column(fps, per_row, row_tokens, src, is_chunk),
                                                     pa.string()))
        return out.append_column(c.SHARD_INFO, pa.nulls(out.num_rows, pa.string()))

    def _add_ids(self, ids: pa.Array, counts: np.ndarray, fps: np.ndarray, tokens: np.ndarray) -> None:
        self.id_parts.append(ids)
        self.count_parts.append(counts.astype(np.int32))
        self.fp_parts.append(fps.astype(np.uint64))
        self.token_parts.append(tokens.astype(np.int64))

    def _skip_unchanged(self, table: pa.Table, fps: np.ndarray, prev: pa.Array, prev_fp: np.ndarray,
                        prev_tokens: np.ndarray) -> np.ndarray:
        """Rows whose document's rows already hold this version: their ids are accounted for here."""
        assert self.change is not None
        prev_n = pc.fill_null(prev, 0).to_numpy(zero_copy_only=False).astype(np.int32)
        known = (fps != 0) & (prev_fp == fps) & (prev_n > 0)
        skip = known if self.change.trust_manifest else np.zeros(len(fps), bool)
        chunks, tokens = np.where(skip, prev_n, 0).astype(np.int32), np.where(skip, prev_tokens, 0)
        # Not known from the id file (new here, or its fingerprint unknown), or the id file not trusted: ask
        # the collection. A document whose recorded fingerprint differs has changed: nothing to ask.
        ask = (fps != 0) & ~skip & ((prev_fp == 0) | (not self.change.trust_manifest))
        if ask.any() and self.change.milvus is not None:
            idx = np.flatnonzero(ask)
            ids = [str(x) for x in table.column(c.DOC_ID).take(pa.array(idx)).to_pylist()]
            ok, got_chunks, got_tokens = stored_unchanged(self.change, ids, fps[idx])
            skip[idx[ok]] = True
            chunks[idx[ok]], tokens[idx[ok]] = got_chunks[ok], got_tokens[ok]
        if skip.any():
            self._add_ids(table.column(c.DOC_ID).combine_chunks().filter(pa.array(skip)), chunks[skip], fps[skip],
                          tokens[skip])
            self.unchanged["unchanged"] += int(skip.sum())
            self.unchanged["chunks_unchanged"] += int(chunks[skip].sum())
            self.unchanged["tokens_skipped"] += int(tokens[skip].sum())
        return skip

    def _prev_columns(self, doc_ids: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """Per row: the chunks, fingerprint and tokens its document had when the shard was last recorded."""
        n = len(doc_ids)
        if self.prev is None or not self.prev.num_rows:
            return pa.nulls(n, pa.int32()), np.zeros(n, np.uint64), np.zeros(n, np.int64)
        from cluster.manifest.ids import FP

        where = pc.index_in(doc_ids, value_set=self.prev.column(c.DOC_ID))
        chunks = pc.take(self.prev.column(c.N_CHUNKS), where).combine_chunks()
        fp = pc.fill_null(pc.take(self.prev.column(FP), where), 0).to_numpy(zero_copy_only=False).astype(np.uint64)
        tokens = pc.fill_null(pc.take(self.prev.column(c.N_TOKENS), where), 0).to_numpy(zero_copy_only=False)
        return chunks, fp, tokens.astype(np.int64)

    def _write_ids(self) -> dict[str, Any]:
        from cluster.manifest.ids import shard_ids, write_table

        ids = pa.concat_arrays(self.id_parts) if self.id_parts else pa.array([], pa.string())
        counts = np.concatenate(self.count_parts) if self.count_parts else np.zeros(0, np.int32)
        fps = np.concatenate(self.fp_parts) if self.fp_parts else np.zeros(0, np.uint64)
        tokens = np.concatenate(self.token_parts) if self.token_parts else np.zeros(0, np.int64)
        table, _ = shard_ids(ids, counts, fps, tokens)
        info: dict[str, Any] = {"docs_unique": table.num_rows}
        if self.store is None or not self.item.get("ids_out"):
            return info
        write_table(self.store.fs, self.store.path(self.item["ids_out"]), table)
        info["ids"] = self.item["ids_out"]
        if self.prev is not None and self.item.get("pending_out"):
            gone = self.prev.filter(pc.invert(pc.is_in(self.prev.column(c.DOC_ID), value_set=table.column(c.DOC_ID))))
            if gone.num_rows:  # documents that left this shard: deleted later unless they turn up elsewhere
                write_table(self.store.fs, self.store.path(self.item["pending_out"]), gone.select([c.DOC_ID,
                                                                                                 c.N_CHUNKS]))
                info["left"] = gone.num_rows
        return info

    def _end_marker(self, docs: int, error: str | None, info: dict[str, Any]) -> pa.Table:
        """One row: shard ``path`` held ``docs`` documents (and failed with ``error``, if set)."""
        columns: dict[str, pa.Array] = {c.DOC_ID: pa.nulls(1, pa.string()), c.TEXT: pa.nulls(1, pa.string())}
        for name in self.source.metadata_columns:
            tp = self.metadata_types.get(name) or (self.schema.field(name).type if self.schema is not None
                                                   and name in self.schema.names else pa.null())
            columns[name] = pa.nulls(1, tp)
        columns[c.SHARD] = pa.array([self.shard.path], pa.string())
        columns[c.ROW] = pa.array([-1], pa.int64())
        columns[c.ERROR] = pa.array([error], pa.string())
        columns[c.PREV_CHUNKS] = pa.nulls(1, pa.int32())
        columns[c.SHARD_END] = pa.array([docs], pa.int64())
        out, _ = tokenize_table(pa.table(columns), self.tok, self.lang_column)
        out = out.append_column(c.EMBED_FP, pa.nulls(1, pa.string()))
        return out.append_column(c.SHARD_INFO, pa.array([json.dumps(info)], pa.string()))

