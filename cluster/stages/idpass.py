"""End of a run (a Ray task): cross-shard duplicate ids and ``delete_missing``, from the id files.

Streams the per-shard id files of the manifest (:mod:`cluster.manifest.ids`): memory is
bounded by batches (about ``FAN_IN x BATCH_ROWS`` ids per merge), never by the corpus, and
nothing of it runs in the driver. Wide merges run their first levels as parallel Ray tasks
(:func:`ray_runner`: at most as many at once as the cluster has CPUs free when the pass
starts, and they reserve none, so they can never wait behind the run's actors; their scratch
files go to ``tmp/<run>/`` in the manifest folder and are removed afterwards).

* duplicates: the distinct ids of the shards processed in this run, against the sum of their
  sizes (each file is unique already; within-shard repeats are counted by the read tasks). The
  ids held by several of them are the repairs (:func:`_plan_repairs`). Only shards of this run
  are compared with each other (a kept shard's ids are not read: docs/exactly-once.md, "Open"),
  and every one of them takes part, even one whose ids are all old: an id in two shards of this
  run may have reached the second in an earlier run that did not process the first, so no run
  compared them yet (this one writes both versions now, and ``duplicate_ids`` counts every id in
  several shards of the run); skipping shards without new ids would leave those versions
  unrepaired and the count short. The one sound shortcut is the key ranges: a file whose
  smallest-to-largest id range (parquet statistics) overlaps no other processed file's shares
  no id with any and is counted from its footer, not merged (``ids.distinct_count``);
* ``delete_missing``: candidates are the ids that left changed shards (pending files) and the
  ids of vanished shards; those found in any current shard (processed now or unchanged) moved
  and stay; the others lose every chunk, by primary key (their largest recorded chunk count,
  then keys probed beyond it). The candidates are streamed (``ids.missing``: merged, looked up
  in memory up to ``ids.IN_MEMORY`` of them, else joined with the merged current files), the
  ones to delete written to a scratch file and counted first, so that ``max_delete`` refuses
  before anything is deleted; then that file is read back 500 at a time. A delete Milvus
  refuses is reported (dead letter), never retried forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c

if TYPE_CHECKING:
    from cluster.manifest.ids import MergeJob

log = logging.getLogger(__name__)
DELETE_STEP = 500  # documents per delete request


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
    parallel: int | None = None  # merge tasks at once; None: the CPUs free when the pass starts (1: no tasks)


def run_id_pass(p: IdPass) -> dict[str, Any]:
    """Returns ``{"distinct": n | None, "docs_deleted", "chunks_deleted", "delete_failures"}``, and ``"refused"``
    (documents that would have been deleted) when they are more than ``max_delete``: then nothing is deleted."""
    from cluster.manifest.ids import distinct_count
    from cluster.manifest.store import Store

    store = Store(p.store_uri, p.storage_options)
    scratch = store.path(f"tmp/{p.run_id or uuid.uuid4().hex}")
    parallel = p.parallel if p.parallel is not None else _free_cpus(store.local)
    run = ray_runner(p.store_uri, p.storage_options, parallel, pin=store.local) if parallel > 1 else None
    out: dict[str, Any] = {"distinct": None, "docs_deleted": 0, "chunks_deleted": 0, "delete_failures": 0,
                           "repairs": {}}
    try:
        if p.count_duplicates and p.processed:
            repeated: list[pa.Array] | None = [] if p.processed_paths else None
            out["distinct"] = distinct_count(store.fs, [store.path(r) for r in p.processed], scratch, run=run,
                                             parallel=parallel, repeated=repeated)
            if repeated:
                out["repairs"] = _plan_repairs(p, store, pc.unique(pa.concat_arrays(repeated)))
        if p.delete and p.candidates:
            out.update(_delete_missing(p, store, scratch, run, parallel))
    finally:
        if store.local:
            with contextlib.suppress(OSError):
                os.rmdir(scratch)  # empty by now: each merge removes its files
    return out


def _free_cpus(local: bool) -> int:
    """CPUs free in the cluster now (this task's own share included; with a local store only this node's)."""
    try:
        import ray

        if not ray.is_initialized():
            return 1
        free = float(ray.available_resources().get("CPU", 0)) + 0.5
    except Exception:  # noqa: BLE001 - no Ray here, or no answer: merge in this task
        return 1
    if local:
        free = min(free, float(os.cpu_count() or 1))
    return max(1, int(free))


def _merge_task(store_uri: str, storage_options: dict[str, Any], job: MergeJob) -> tuple[int, int]:
    from cluster.manifest.ids import merge_group
    from cluster.manifest.store import Store

    return merge_group(Store(store_uri, storage_options).fs, job)


def ray_runner(store_uri: str, storage_options: dict[str, Any], parallel: int, *, pin: bool = False
               ) -> Callable[[list[MergeJob]], list[tuple[int, int]]]:
    """Runs a level's merges as Ray tasks, at most ``parallel`` at once. They reserve no CPU (the bound is this
    count, taken from the CPUs free when the pass starts): on a small node whose CPUs the run's actors hold,
    a task asking for one would wait for ever. ``pin``: on this node (the store is a local folder)."""
    import ray

    options: dict[str, Any] = {"num_cpus": 0, "max_retries": 2}  # a merge only writes its own scratch file
    if pin:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(_merge_task).options(**options)

    def run(jobs: list[MergeJob]) -> list[tuple[int, int]]:
        results: list[tuple[int, int]] = [(0, 0)] * len(jobs)
        todo, flying = list(enumerate(jobs)), {}
        try:
            while todo or flying:
                while todo and len(flying) < parallel:
                    i, job = todo.pop(0)
                    flying[task.remote(store_uri, storage_options, job)] = i
                done, _ = ray.wait(list(flying), num_returns=1)
                for ref in done:
                    results[flying.pop(ref)] = tuple(ray.get(ref))  # type: ignore[assignment]
        finally:
            for ref in flying:  # a merge failed: stop the others before their files are removed
                ray.cancel(ref, force=True)
        log.info("id pass: %d merge(s) of %d file(s), %d at a time", len(jobs), sum(len(j.paths) for j in jobs),
                 parallel)
        return results

    return run


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


def _gone(p: IdPass, store: Any, scratch: str, run: Any, parallel: int, out: str) -> int:
    """Writes to ``out`` the candidates no current shard holds (largest recorded chunk count each); how many."""
    from cluster.manifest.ids import missing

    candidates = []
    for rel in p.candidates:
        if store.fs.exists(store.path(rel)):
            candidates.append(store.path(rel))
        else:
            log.warning("candidate file %s is gone", rel)
    if not candidates:
        return 0
    return missing(store.fs, candidates, [store.path(r) for r in p.processed + p.kept], out, scratch, run=run,
                   parallel=parallel)


def _delete_missing(p: IdPass, store: Any, scratch: str, run: Any = None, parallel: int = 1) -> dict[str, Any]:
    gone = f"{scratch}/gone-{uuid.uuid4().hex}.parquet"
    try:
        n = _gone(p, store, scratch, run, parallel, gone)
        if not n:
            return {}
        if p.max_delete is not None and n > p.max_delete:
            return {"refused": n}
        return _delete(p, store, gone)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if store.fs.exists(gone):
                store.fs.rm_file(gone)


def _delete(p: IdPass, store: Any, gone: str) -> dict[str, Any]:
    """Deletes every chunk of the documents in the file ``gone`` (their recorded count, then the tails probed)."""
    from cluster.deadletter import DeadLetter
    from cluster.manifest.ids import iter_batches
    from cluster.milvus.connect import connect
    from cluster.milvus.errors import MilvusWriteError
    from cluster.milvus.writer import MilvusWriter

    client = connect(p.milvus)
    dead = DeadLetter(p.errors_uri, p.errors_options, f"{p.run_id}-deletes")
    deleted_docs = deleted_chunks = failures = 0
    try:
        writer = MilvusWriter(client, p.spec, p.milvus)
        for batch in iter_batches(store.fs, gone, DELETE_STEP, (c.DOC_ID, c.N_CHUNKS)):
            part, n = batch.column(0).to_pylist(), batch.column(1).to_pylist()
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

