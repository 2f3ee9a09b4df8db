"""Stage 4 (a pool of Ray actors): write embedded blocks into Milvus, report small per-shard records.

A :class:`BlockWriter` receives whole embedded blocks (the driver passes object references; the
data goes from the embed actors' object store to the writer, never through the driver) and:

* upserts the rows without an error (``milvus.mode: upsert``) or appends them to the parquet
  import files of the block's import group (``bulk_import``, see :mod:`cluster.milvus.importfiles`);
* deletes the stale tail of each document whose chunk count shrank (by primary key); documents
  whose earlier count is unknown in a collection that may hold older rows are probed by key;
* buffers rejected rows for the dead-letter files, written on :meth:`checkpoint`;
* returns :func:`cluster.records.block_record`: counts per shard, tagged with this actor's
  incarnation, so that the driver can tell records lost with a restarted actor.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c
from cluster.deadletter import DeadLetter
from cluster.records import block_record
from cluster.settings import ErrorsConfig, MilvusConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterSettings:
    """What every writer of a run needs (one object, passed whole)."""

    milvus: MilvusConfig  # the effective one (a local milvus-lite path replaced by the job's server uri)
    spec: Any  # cluster.milvus.CollectionSpec
    errors: ErrorsConfig
    dead_letter_options: dict[str, Any]
    run_id: str
    replaces_rows: bool  # the collection may hold older versions of documents with unknown chunk counts
    bulk: bool = False
    bulk_root: str | None = None  # s3://bucket/prefix of this run's import files
    bulk_options: dict[str, Any] = field(default_factory=dict)
    bulk_file_bytes: int = 1 << 30
    scratch_dir: str | None = None
    groups: dict[str, int] = field(default_factory=dict)  # bulk: shard path -> import group
    tags: dict[str, int] = field(default_factory=dict)  # bulk: shard path -> tag in the import files


class BlockWriter:
    """One writer (run as a Ray actor; also usable in-process for tests and benchmarks)."""

    def __init__(self, settings: WriterSettings, index: int) -> None:
        from cluster.milvus.connect import connect
        from cluster.milvus.writer import MilvusWriter

        self.s, self.index = settings, index
        self.incarnation = uuid.uuid4().hex[:12]
        self.client = connect(settings.milvus)
        self.writer = MilvusWriter(self.client, settings.spec, settings.milvus)
        self.dead = DeadLetter(settings.errors.uri, settings.dead_letter_options,
                               f"{settings.run_id}-w{index:03d}-{self.incarnation}")
        self.files: dict[int, Any] = {}  # bulk: import group -> ImportFiles
        self.scratch: str | None = None
        self.deleted = 0

    def write(self, block: pa.Table) -> dict[str, Any]:
        """Write one embedded block; returns its record (counts per shard, rows written, rejects)."""
        rec = block_record(block)
        err = pc.is_valid(block.column(c.ERROR)).to_numpy(zero_copy_only=False)
        if err.any():
            rows = block.filter(pa.array(err)).select([c.SHARD, c.ROW, c.DOC_ID, c.ERROR]).to_pylist()
            self.dead.add([{"shard": r[c.SHARD], "row": r[c.ROW], "doc_id": r[c.DOC_ID], "reason": r[c.ERROR]}
                           for r in rows])
        deleted_before = self.deleted
        payload = ~err & pc.is_null(block.column(c.SHARD_END)).to_numpy(zero_copy_only=False)
        rows = block.filter(pa.array(payload)) if not payload.all() else block
        written = self._bulk(rows) if self.s.bulk else self._upsert(rows)
        for path, n in written.items():
            rec["shards"][path]["rows_written"] = n
        rec.update(incarnation=self.incarnation, writer=self.index, stale_deleted=self.deleted - deleted_before,
                   at=time.time())
        return rec

    def _upsert(self, rows: pa.Table) -> dict[str, int]:
        if not rows.num_rows:
            return {}
        self.writer.write(rows)
        self._drop_stale_tails(rows)
        return _rows_per_shard(rows)

    def _drop_stale_tails(self, rows: pa.Table) -> None:
        """Delete chunks beyond each document's new chunk count that an earlier, longer version left."""
        first = rows.filter(pc.equal(rows.column(c.CHUNK_INDEX), 0))
        if not first.num_rows:
            return
        ids = first.column(c.DOC_ID).to_pylist()
        n = first.column(c.N_CHUNKS).to_numpy(zero_copy_only=False)
        prev = first.column(c.PREV_CHUNKS)
        known = pc.is_valid(prev).to_numpy(zero_copy_only=False)
        prev_n = pc.fill_null(prev, 0).to_numpy(zero_copy_only=False)
        stale = [pk for i in np.flatnonzero(known & (prev_n > n))
                 for pk in c.chunk_pks(ids[i], int(n[i]), int(prev_n[i]))]
        if self.s.replaces_rows:
            unknown = np.flatnonzero(~known)
            stale += self.writer.chunk_tails([(ids[i], int(n[i])) for i in unknown])
        if stale:
            self.writer.delete_keys(stale)
            self.deleted += len(stale)

    def _bulk(self, rows: pa.Table) -> dict[str, int]:
        if not rows.num_rows:
            return {}
        from cluster.milvus.importfiles import ImportFiles
        from embedder.storage import filesystem

        shard = rows.column(c.SHARD).to_pylist()
        groups = np.array([self.s.groups[p] for p in shard], dtype=np.int64)
        tags = np.array([self.s.tags[p] for p in shard], dtype=np.int32)
        for g in np.unique(groups):
            mine = groups == g
            if int(g) not in self.files:
                fs, root = filesystem(self.s.bulk_root, self.s.bulk_options)
                if self.scratch is None:
                    self.scratch = self.s.scratch_dir or tempfile.mkdtemp(prefix="embed-import-")
                self.files[int(g)] = ImportFiles(self.s.spec, fs, root, f"g{int(g):05d}-w{self.index:03d}-"
                                                 f"{self.incarnation}", max_file_bytes=self.s.bulk_file_bytes,
                                                 scratch_dir=self.scratch)
            self.files[int(g)].write(rows.filter(pa.array(mine)), tags[mine])
        return _rows_per_shard(rows)

    def close_group(self, group: int, drop_tags: list[int]) -> dict[str, Any]:
        """Finish and upload this writer's files of an import group, without the rows of ``drop_tags``."""
        files = self.files.pop(group, None)
        out = [] if files is None else files.close(drop_tags=frozenset(drop_tags))
        return {"incarnation": self.incarnation, "writer": self.index,
                "files": [{"uri": f.uri, "path": f.path, "rows": f.rows, "bytes": f.bytes, "tag_rows": f.tag_rows}
                          for f in out]}

    def checkpoint(self) -> dict[str, Any]:
        """Write the buffered dead letters; the driver records shards only after this returned."""
        self.dead.flush()
        return {"incarnation": self.incarnation, "writer": self.index, "dead_files": list(self.dead.files),
                "rejects_written": self.dead.count}

    def close(self) -> dict[str, Any]:
        """Flush dead letters and drop the Milvus connection."""
        out = self.checkpoint()
        self.client.close()
        if self.scratch and not self.s.scratch_dir:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return out

    def ping(self) -> str:
        return self.incarnation


def _rows_per_shard(rows: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(rows.column(c.SHARD).combine_chunks())
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
