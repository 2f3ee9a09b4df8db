"""The driver: check everything that can fail cheaply, then stream the pipeline into Milvus.

The driver is the single Milvus writer: milvus-lite allows one process per data dir, and
one writer keeps shard completion (and later the resume manifest) in one place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c
from cluster.checkpoint import Manifest, job_identity
from cluster.deadletter import DeadLetter
from cluster.progress import RunTracker
from cluster.source import Shard, ShardError, list_shards, read_shard
from cluster.stages.arrow import is_payload

if TYPE_CHECKING:
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")


@dataclass(frozen=True)
class Plan:
    """What the run will do, settled before any embedding."""

    shards: list[Shard]  # to process now
    spec: Any  # cluster.milvus.CollectionSpec
    client: Any  # pymilvus.MilvusClient, owned by the driver
    manifest: Manifest | None = None
    skipped: int = 0  # shards the manifest records as finished and unchanged
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)  # manifest records of this identity
    vanished: list[str] = field(default_factory=list)  # recorded shards no longer in the source
    kept: list[str] = field(default_factory=list)  # recorded, unchanged shards skipped by this run
    replaces_rows: bool = False  # the collection existed: documents may have older, longer versions


def plan(cfg: JobConfig) -> Plan:
    """List shards, read the model's shape (no weights), open or create the collection.

    Every error found here (bad source, model, dimension or collection schema) stops the run
    before any embedding.
    """
    from cluster.milvus import CollectionSpec, ensure_collection
    from cluster.milvus.connect import connect
    from embedder.models.info import load_model_info
    from embedder.models.loader import check_batch_budget, check_dense_dim, check_sparse

    shards = list_shards(cfg.source)
    info = load_model_info(cfg.model)
    if info.dim is None:
        raise ValueError(f"cannot tell the output dimension of {cfg.model.name} from its module configs")
    check_dense_dim(cfg.model, info.dim)
    check_sparse(cfg.model, info.has_sparse_head)
    check_batch_budget(cfg.batch.max_tokens, info.max_seq_length)
    spec = CollectionSpec(name=cfg.milvus.collection, dense_dim=cfg.model.dense_dim or info.dim,
                          has_sparse=info.has_sparse_head and cfg.model.sparse is not False,
                          store_text=cfg.milvus.store_text, text_max_length=cfg.milvus.text_max_length,
                          metadata=metadata_types(cfg, shards))
    client = connect(cfg.milvus)
    try:
        return _plan_shards(cfg, shards, spec, client, created=ensure_collection(client, spec))
    except BaseException:
        client.close()
        raise


def _plan_shards(cfg: JobConfig, shards: list[Shard], spec: Any, client: Any, *, created: bool) -> Plan:
    """Which shards to process, from the manifest; bulk imports only into an empty collection."""
    if cfg.milvus.mode == "bulk_import" and not created:
        rows = int(client.query(spec.name, filter="", output_fields=["count(*)"])[0]["count(*)"])
        if rows:
            raise ValueError(f"milvus.mode bulk_import inserts rows, and collection {spec.name!r} already holds "
                             f"{rows}: import into a new collection (jobs.reindex) or use milvus.mode upsert")
    if not cfg.checkpoint.uri:
        return Plan(shards=shards, spec=spec, client=client, replaces_rows=not created)
    manifest = Manifest(cfg.checkpoint.uri, cfg.checkpoint.storage_options or cfg.source.storage_options,
                        job_identity(cfg))
    if cfg.mode == "full" and manifest.run_finished():
        log.info("the previous full run finished: starting over (mode: incremental skips unchanged shards)")
        manifest.reset()
    previous = manifest.records()
    todo = [s for s in shards if not Manifest.unchanged(previous.get(s.path), s)]
    listed = {s.path for s in shards}
    vanished = [p for p in previous if p not in listed]
    if len(todo) < len(shards):
        log.info("manifest %s: %d of %d shard(s) already done and unchanged, skipped", manifest.uri,
                 len(shards) - len(todo), len(shards))
    todo_paths = {s.path for s in todo}
    return Plan(shards=todo, spec=spec, client=client, manifest=manifest, skipped=len(shards) - len(todo),
                previous=previous, vanished=vanished, kept=[s.path for s in shards if s.path not in todo_paths],
                replaces_rows=not created)


def metadata_types(cfg: JobConfig, shards: list[Shard]) -> dict[str, pa.DataType]:
    """Arrow types of the metadata columns, from the first readable shard."""
    if not cfg.source.metadata_columns:
        return {}
    for shard in shards:
        try:
            batch = next(iter(read_shard(shard, cfg.source)), None)
        except ShardError as e:
            log.warning("while looking for metadata types: %s", e)
            continue
        if batch is not None:
            return {name: batch.schema.field(name).type for name in cfg.source.metadata_columns}
    raise ValueError("no readable shard to take the metadata column types from")


class RejectedInput(RuntimeError):
    """errors.on_error is fail, or more input was rejected than errors.max_error_ratio allows."""


def run(cfg: JobConfig, the_plan: Plan) -> dict[str, object]:
    """Stream the dataset, write rows, record finished shards, report rejects; returns the summary."""
    from cluster.milvus import BulkFileWriter, MilvusWriter, run_import
    from cluster.pipeline import build_dataset

    bulk = cfg.milvus.mode == "bulk_import"
    tracker = RunTracker(the_plan.shards)
    tracker.shards_skipped = the_plan.skipped
    by_path = {s.path: s for s in the_plan.shards}
    finished: list[str] = []  # shards complete in the stream, recorded once their rows are flushed
    last_log = last_record = time.monotonic()
    dead = None
    log.info("embedding %d shard(s) into %s (dense %d, sparse %s)", len(the_plan.shards), cfg.milvus.collection,
             the_plan.spec.dense_dim, the_plan.spec.has_sparse)
    try:
        dead = DeadLetter(cfg.errors.uri, cfg.source.storage_options, time.strftime("%Y%m%dT%H%M%S"))
        # bulk_import: parquet import files in the server's bucket, imported at the end (insert, not upsert).
        writer = BulkFileWriter(the_plan.spec, cfg.milvus) if bulk else MilvusWriter(the_plan.client, the_plan.spec,
                                                                                     cfg.milvus)
        if the_plan.shards:
            for batch in build_dataset(cfg, the_plan.shards).iter_batches(batch_format="pyarrow", batch_size=None):
                done = tracker.observe(batch)
                errors = ~batch.column(c.ERROR).is_null().to_numpy(zero_copy_only=False)
                payload = is_payload(batch)
                if payload.any():
                    rows = batch.filter(pa.array(payload))
                    tracker.rows_written += writer.write(rows)
                    if not bulk:
                        drop_stale_tails(writer, rows, the_plan)
                if errors.any():
                    report_rejects(cfg, batch.filter(pa.array(errors)), dead)
                check_error_ratio(cfg, tracker, final=False)
                finished.extend(done)
                # Record finished shards every few seconds: a flush per shard would stall on many small shards.
                if finished and not bulk and time.monotonic() - last_record >= 5:
                    writer.flush()
                    dead.flush()
                    record(the_plan, tracker, by_path, finished)
                    last_record = time.monotonic()
                if time.monotonic() - last_log >= cfg.log_every_s:
                    log.info(tracker.progress_line())
                    last_log = time.monotonic()
        if bulk:
            files = writer.close()
            log.info("importing %d bulk file(s) into %s", len(files), cfg.milvus.collection)
            run_import(cfg.milvus, files, collection=cfg.milvus.collection)
        else:
            writer.flush()
        dead.flush()
        record(the_plan, tracker, by_path, finished)
        if cfg.delete_missing:
            delete_missing(the_plan, tracker, writer)
        check_error_ratio(cfg, tracker, final=True)
    except BaseException as e:
        e.summary = tracker.summary()  # type: ignore[attr-defined]  # what was done before the failure
        raise
    finally:
        try:
            files = dead.close() if dead is not None else []
            if files:
                log.warning("%d rejected row(s) written to %s", dead.count, ", ".join(files))
        finally:
            the_plan.client.close()
    summary = tracker.summary()
    if the_plan.manifest is not None and summary["shards_done"] == len(the_plan.shards):
        the_plan.manifest.set_finished(True, summary)
    log.info(tracker.progress_line())
    log.info("summary %s", json.dumps(summary))
    return summary


def drop_stale_tails(writer: Any, rows: pa.Table, the_plan: Plan) -> None:
    """Delete chunks beyond a document's new chunk count (left by a longer earlier version of it).

    Only needed when older versions may exist: the collection existed before this run, or the
    shard was recorded by an earlier run.
    """
    from cluster.stages.tokenize import N_CHUNKS

    first = rows.filter(pc.equal(rows.column(c.CHUNK_INDEX), 0))
    if not first.num_rows:
        return
    if not the_plan.replaces_rows:
        first = first.filter(pa.array([p in the_plan.previous for p in first.column(c.SHARD).to_pylist()]))
    by_count: dict[int, list[str]] = {}
    for doc_id, n in zip(first.column(c.DOC_ID).to_pylist(), first.column(N_CHUNKS).to_pylist()):
        by_count.setdefault(int(n), []).append(doc_id)
    for n, ids in by_count.items():
        writer.delete(f"doc_id in {json.dumps(ids, ensure_ascii=False)} and chunk_index >= {n}")


def record(the_plan: Plan, tracker: RunTracker, by_path: dict[str, Shard], finished: list[str]) -> None:
    """Write the manifest entries of shards whose rows are flushed; duplicates and stale ids counted here."""
    for path in finished:
        ids = tracker.finish_shard(path)
        st = tracker.shards[path]
        if the_plan.manifest is not None and st.error is None:  # a failed shard is retried by the next run
            old = the_plan.previous.get(path)
            if old is not None:  # a changed shard: ids that left it are deleted later (delete_missing)
                gone = set(the_plan.manifest.doc_ids(path)) - set(ids)
                if gone:
                    the_plan.manifest.add_pending_deletes(path, gone)
            the_plan.manifest.mark_done(by_path[path], {"docs": st.docs_total, "chunks": st.chunks_seen}, ids)
    finished.clear()


def delete_missing(the_plan: Plan, tracker: RunTracker, writer: Any) -> None:
    """Incremental: remove documents whose shard vanished or that left a changed shard.

    A document that merely moved (to a shard processed in this run, or to an unchanged one) is
    still in the source and is kept.
    """
    pending, pending_files = the_plan.manifest.pending_deletes()
    candidates = set(pending)
    for path in the_plan.vanished:
        candidates.update(the_plan.manifest.doc_ids(path))
    candidates -= set(tracker.already_seen(sorted(candidates)))
    for path in the_plan.kept if candidates else []:
        candidates -= set(the_plan.manifest.doc_ids(path))
    ids = sorted(candidates)
    for start in range(0, len(ids), 1000):
        writer.delete(f"doc_id in {json.dumps(ids[start:start + 1000], ensure_ascii=False)}")
    if ids:
        log.info("deleted the chunks of %d document(s) no longer in the source", len(ids))
    tracker.docs_deleted = len(ids)
    for path in the_plan.vanished:
        the_plan.manifest.forget(path)
    the_plan.manifest.clear_pending(pending_files)


def report_rejects(cfg: JobConfig, rejected: pa.Table, dead: DeadLetter) -> None:
    """Log and dead-letter rejected rows; with errors.on_error=fail, stop the run."""
    rows = [{"shard": r[c.SHARD], "row": r[c.ROW], "doc_id": r[c.DOC_ID], "reason": r[c.ERROR]}
            for r in rejected.select([c.SHARD, c.ROW, c.DOC_ID, c.ERROR]).to_pylist()]
    for r in rows[:20]:
        log.warning("rejected: shard=%s row=%s doc_id=%s: %s", r["shard"], r["row"], r["doc_id"], r["reason"])
    dead.add(rows)
    if cfg.errors.on_error == "fail":
        raise RejectedInput(f"rejected input with errors.on_error=fail: shard={rows[0]['shard']} "
                            f"row={rows[0]['row']} doc_id={rows[0]['doc_id']}: {rows[0]['reason']}")


def check_error_ratio(cfg: JobConfig, tracker: RunTracker, *, final: bool) -> None:
    if final and tracker.shards and tracker.shards_failed == len(tracker.shards):
        raise RejectedInput(f"every shard ({len(tracker.shards)}) failed to read; see the dead-letter files under "
                            f"{cfg.errors.uri} or the log")
    read = tracker.docs_read
    if read and (final or read >= 1000) and tracker.docs_failed / read > cfg.errors.max_error_ratio:
        raise RejectedInput(f"{tracker.docs_failed} of {read} documents rejected, more than errors.max_error_ratio="
                            f"{cfg.errors.max_error_ratio}; see the dead-letter files under {cfg.errors.uri}")


__all__ = ["Plan", "RejectedInput", "plan", "run"]
