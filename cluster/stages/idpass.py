"""End of a run (a Ray task): cross-shard duplicate ids and ``delete_missing``, from the id files.

Streams the per-shard id files of the manifest (:mod:`cluster.manifest.ids`): memory is
bounded by batches and by the deletion candidates, never by the corpus, and nothing of it runs
in the driver.

* duplicates: the distinct ids of the shards processed in this run, against the sum of their
  sizes (each file is unique already; within-shard repeats are counted by the read tasks);
* ``delete_missing``: candidates are the ids that left changed shards (pending files) and the
  ids of vanished shards; those found in any current shard (processed now or unchanged) moved
  and stay; the others lose every chunk, by primary key (their recorded chunk count, then keys
  probed beyond it). A delete Milvus refuses is reported (dead letter), never retried forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdPass:
    """What the end-of-run pass does (one object, sent to the task)."""

    store_uri: str  # the manifest folder of the run's identity
    storage_options: dict[str, Any]
    processed: list[str]  # id files (relative) of the shards finished in this run
    processed_paths: list[str] = field(default_factory=list)  # their shards' paths (same order): repairs
    kept: list[str] = field(default_factory=list)  # id files of recorded shards skipped by this run
    candidates: list[str] = field(default_factory=list)  # pending files and id files of vanished shards
    count_duplicates: bool = True
    delete: bool = False
    max_delete: int | None = None  # more documents to delete than this: nothing is deleted ("refused")
    milvus: Any = None  # effective MilvusConfig (deletes only)
    spec: Any = None  # CollectionSpec (deletes only)
    errors_uri: str | None = None
    errors_options: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""


def run_id_pass(p: IdPass) -> dict[str, Any]:
    """Returns ``{"distinct": n | None, "docs_deleted", "chunks_deleted", "delete_failures"}``, and ``"refused"``
    (documents that would have been deleted) when they are more than ``max_delete``: then nothing is deleted."""
    from cluster.manifest.ids import distinct_count
    from cluster.manifest.store import Store

    store = Store(p.store_uri, p.storage_options)
    out: dict[str, Any] = {"distinct": None, "docs_deleted": 0, "chunks_deleted": 0, "delete_failures": 0,
                           "repairs": {}}
    if p.count_duplicates and p.processed:
        repeated: list[pa.Array] | None = [] if p.processed_paths else None
        out["distinct"] = distinct_count(store.fs, [store.path(r) for r in p.processed],
                                         store.path(f"tmp/{p.run_id}"), repeated=repeated)
        if repeated:
            out["repairs"] = _plan_repairs(p, store, pc.unique(pa.concat_arrays(repeated)))
    if p.delete and p.candidates:
        out.update(_delete_missing(p, store))
    return out


def _plan_repairs(p: IdPass, store: Any, repeated: pa.Array) -> dict[str, str]:
    """Which shard's version of each id held by several shards of this run wins: the shard whose path sorts
    last. Writes, per winning shard, its ids with the most chunks any version had (so that the re-write
    deletes the longer versions' tails); returns ``{shard path: repair file}``."""
    from cluster.manifest.ids import locate, write_table
    from cluster.manifest.manifest import repair_rel

    hits = locate(store.fs, [store.path(r) for r in p.processed], repeated)
    shard = pc.take(pa.array(p.processed_paths, pa.string()), hits.column("file"))
    table = pa.table({c.DOC_ID: hits.column(c.DOC_ID), "shard": shard, c.N_CHUNKS: hits.column(c.N_CHUNKS)})
    best = table.group_by(c.DOC_ID).aggregate([("shard", "max"), (c.N_CHUNKS, "max")])
    out: dict[str, str] = {}
    for path in pc.unique(best.column("shard_max")).to_pylist():
        mine = best.filter(pc.equal(best.column("shard_max"), path))
        rel = repair_rel(path, p.run_id)
        write_table(store.fs, store.path(rel), pa.table({
            c.DOC_ID: mine.column(c.DOC_ID), c.N_CHUNKS: mine.column(f"{c.N_CHUNKS}_max").cast(pa.int32())}
        ).sort_by(c.DOC_ID))
        out[path] = rel
    log.info("%d id(s) are held by several shards of this run; the version in the shard whose path sorts last "
             "is written again, last (%d shard(s))", len(repeated), len(out))
    return out


def _candidates(p: IdPass, store: Any) -> pa.Table:
    from cluster.manifest.ids import read_table

    parts = []
    for rel in p.candidates:
        try:
            parts.append(read_table(store.fs, store.path(rel)))
        except FileNotFoundError:
            log.warning("candidate file %s is gone", rel)
    if not parts:
        return pa.table({c.DOC_ID: pa.array([], pa.string()), c.N_CHUNKS: pa.array([], pa.int32())})
    table = pa.concat_tables(parts)
    grouped = table.group_by(c.DOC_ID).aggregate([(c.N_CHUNKS, "max")])
    return pa.table({c.DOC_ID: grouped.column(c.DOC_ID), c.N_CHUNKS: grouped.column(f"{c.N_CHUNKS}_max")})


def _delete_missing(p: IdPass, store: Any) -> dict[str, Any]:
    from cluster.deadletter import DeadLetter
    from cluster.manifest.ids import present
    from cluster.milvus.connect import connect
    from cluster.milvus.errors import MilvusWriteError
    from cluster.milvus.writer import MilvusWriter

    cands = _candidates(p, store)
    if not cands.num_rows:
        return {}
    found = present(store.fs, [store.path(r) for r in p.processed + p.kept], cands.column(c.DOC_ID))
    gone = cands.filter(pc.invert(pc.is_in(cands.column(c.DOC_ID), value_set=found)))
    if p.max_delete is not None and gone.num_rows > p.max_delete:
        return {"refused": gone.num_rows}
    client = connect(p.milvus)
    dead = DeadLetter(p.errors_uri, p.errors_options, f"{p.run_id}-deletes")
    deleted_docs = deleted_chunks = failures = 0
    try:
        writer = MilvusWriter(client, p.spec, p.milvus)
        ids = gone.column(c.DOC_ID).to_pylist()
        counts = gone.column(c.N_CHUNKS).to_pylist()
        step = 500
        for start in range(0, len(ids), step):
            part, n = ids[start:start + step], counts[start:start + step]
            try:
                keys = [pk for d, k in zip(part, n) for pk in c.chunk_pks(d, 0, int(k or 0))]
                keys += writer.chunk_tails([(d, int(k or 0)) for d, k in zip(part, n)])
                if keys:
                    writer.delete_keys(keys)
                deleted_docs += len(part)
                deleted_chunks += len(keys)
            except MilvusWriteError as e:
                if "not transient" not in str(e):
                    raise  # Milvus is down: the run fails and the pending deletes stay for the next run
                failures += len(part)
                dead.add([{"shard": None, "row": None, "doc_id": d, "reason": f"delete_missing failed: {e}"}
                          for d in part])
    finally:
        dead.close()
        client.close()
    if failures:
        log.error("%d document(s) could not be deleted (see the dead-letter files under %s); they are not retried",
                  failures, p.errors_uri)
    return {"docs_deleted": deleted_docs, "chunks_deleted": deleted_chunks, "delete_failures": failures}

