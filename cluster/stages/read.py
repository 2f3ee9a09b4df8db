"""Stage 1 (CPU tasks, one shard per task): read, tokenize, and account for the shard's ids.

A task streams its shard batch by batch: rows are checked, tokenized and windowed into chunk
rows (:mod:`cluster.stages.tokenize`) and yielded at once. Since the task sees every document
of its shard, it also:

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
from cluster.source.rows import ID_KINDS
from cluster.stages.tokenize import get_tokenizer, tokenize_table
from embedder.settings import ChunkingConfig, ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdsSink:
    """Where read tasks put id files: the manifest folder of the run's identity."""

    uri: str
    storage_options: dict[str, Any]


def shard_items(shards: list[Shard], prev_ids: dict[str, str | None], ids_out: dict[str, str],
                pending_out: dict[str, str]) -> list[dict[str, object]]:
    """The items the read stage starts from: one per shard, with where its id files are (relative paths)."""
    return [{"path": s.path, "format": s.format, "size": s.size, "version": s.version,
             "prev_ids": prev_ids.get(s.path), "ids_out": ids_out.get(s.path), "pending_out": pending_out.get(s.path)}
            for s in shards]


def read_and_tokenize(batch: pa.Table, *, source: SourceConfig, model: ModelConfig, chunking: ChunkingConfig,
                      lang_column: str | None = None, ids: IdsSink | None = None,
                      progress: Any = None) -> Iterator[pa.Table]:
    """Chunk rows of every shard in ``batch`` (items of :func:`shard_items`), each shard closed by its marker."""
    for item in batch.to_pylist():
        yield from ShardReader(item, source, model, chunking, lang_column, ids, progress).run()


class ShardReader:
    """Reads one shard into chunk rows and accounts for its ids (one task, one shard)."""

    def __init__(self, item: dict[str, Any], source: SourceConfig, model: ModelConfig, chunking: ChunkingConfig,
                 lang_column: str | None, ids: IdsSink | None, progress: Any) -> None:
        self.item, self.source, self.lang_column, self.progress = item, source, lang_column, progress
        self.shard = Shard(path=item["path"], format=item["format"], size=item["size"], version=item["version"])
        self.tok = get_tokenizer(model, chunking)
        self.store = None
        if ids is not None:
            from cluster.manifest.store import Store

            self.store = Store(ids.uri, ids.storage_options)
        self.prev = self._previous_ids()
        self.kinds: set[str] = set()
        self.id_parts: list[pa.Array] = []
        self.count_parts: list[np.ndarray] = []
        self.schema: pa.Schema | None = None

    def _previous_ids(self) -> pa.Table | None:
        if self.store is None or not self.item.get("prev_ids"):
            return None
        from cluster.manifest.ids import read_table

        try:
            return read_table(self.store.fs, self.store.path(self.item["prev_ids"]))
        except FileNotFoundError:
            log.warning("the id file %s of %s is gone; its documents count as new", self.item["prev_ids"],
                        self.shard.path)
            return None

    def run(self) -> Iterator[pa.Table]:
        docs, error = 0, None
        try:
            for table in read_shard(self.shard, self.source):
                kinds = (table.schema.metadata or {}).get(ID_KINDS.encode())
                if kinds:
                    self.kinds.update(kinds.decode().split(","))
                table = table.replace_schema_metadata(None)
                self.schema = table.schema
                out = self._tokenize(table)
                docs += table.num_rows
                if self.progress is not None:
                    self.progress.add.remote(docs_read=table.num_rows, chunks_tokenized=int(out.num_rows))
                yield out
        except ShardError as e:
            log.warning("%s", e)
            error = str(e)
        info: dict[str, Any] = {"id_kinds": sorted(self.kinds)}
        if error is None:
            info.update(self._write_ids())
        yield self._end_marker(docs, error, info)

    def _tokenize(self, table: pa.Table) -> pa.Table:
        prev = self._prev_chunks(table.column(c.DOC_ID))
        table = table.append_column(c.PREV_CHUNKS, prev).append_column(c.SHARD_END, pa.nulls(table.num_rows,
                                                                                            pa.int64()))
        out, per_row = tokenize_table(table, self.tok, self.lang_column)
        # The id file keeps, per document, the rows it has in Milvus after this run: its new chunk
        # count, or (rejected now) what it had before.
        counts = np.where(per_row > 0, per_row, pc.fill_null(prev, 0).to_numpy(zero_copy_only=False)).astype(np.int32)
        self.id_parts.append(table.column(c.DOC_ID).combine_chunks())
        self.count_parts.append(counts)
        return out.append_column(c.SHARD_INFO, pa.nulls(out.num_rows, pa.string()))

    def _prev_chunks(self, doc_ids: pa.ChunkedArray) -> pa.Array:
        if self.prev is None or not self.prev.num_rows:
            return pa.nulls(len(doc_ids), pa.int32())
        where = pc.index_in(doc_ids, value_set=self.prev.column(c.DOC_ID))
        return pc.take(self.prev.column(c.N_CHUNKS), where).combine_chunks()

    def _write_ids(self) -> dict[str, Any]:
        from cluster.manifest.ids import shard_ids, write_table

        ids = pa.concat_arrays(self.id_parts) if self.id_parts else pa.array([], pa.string())
        counts = np.concatenate(self.count_parts) if self.count_parts else np.zeros(0, np.int32)
        table, duplicates = shard_ids(ids, counts)
        info: dict[str, Any] = {"duplicates": duplicates, "docs_unique": table.num_rows}
        if self.store is None or not self.item.get("ids_out"):
            return info
        write_table(self.store.fs, self.store.path(self.item["ids_out"]), table)
        info["ids"] = self.item["ids_out"]
        if self.prev is not None and self.item.get("pending_out"):
            gone = self.prev.filter(pc.invert(pc.is_in(self.prev.column(c.DOC_ID), value_set=table.column(c.DOC_ID))))
            if gone.num_rows:  # documents that left this shard: deleted later unless they turn up elsewhere
                write_table(self.store.fs, self.store.path(self.item["pending_out"]), gone)
                info["left"] = gone.num_rows
        return info

    def _end_marker(self, docs: int, error: str | None, info: dict[str, Any]) -> pa.Table:
        """One row: shard ``path`` held ``docs`` documents (and failed with ``error``, if set)."""
        columns: dict[str, pa.Array] = {c.DOC_ID: pa.nulls(1, pa.string()), c.TEXT: pa.nulls(1, pa.string())}
        for name in self.source.metadata_columns:
            tp = self.schema.field(name).type if self.schema is not None and name in self.schema.names else pa.null()
            columns[name] = pa.nulls(1, tp)
        columns[c.SHARD] = pa.array([self.shard.path], pa.string())
        columns[c.ROW] = pa.array([-1], pa.int64())
        columns[c.ERROR] = pa.array([error], pa.string())
        columns[c.PREV_CHUNKS] = pa.nulls(1, pa.int32())
        columns[c.SHARD_END] = pa.array([docs], pa.int64())
        out, _ = tokenize_table(pa.table(columns), self.tok, self.lang_column)
        return out.append_column(c.SHARD_INFO, pa.array([json.dumps(info)], pa.string()))

