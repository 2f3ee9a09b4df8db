"""The driver: check everything that can fail cheaply, then stream the pipeline into Milvus.

The driver is the single Milvus writer: milvus-lite allows one process per data dir, and
one writer keeps shard completion (and later the resume manifest) in one place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from cluster import contract as c
from cluster.progress import RunTracker
from cluster.source import Shard, ShardError, list_shards, read_shard
from cluster.stages.arrow import SHARD_END

if TYPE_CHECKING:
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")


@dataclass(frozen=True)
class Plan:
    """What the run will do, settled before any embedding."""

    shards: list[Shard]
    spec: Any  # cluster.milvus.CollectionSpec
    client: Any  # pymilvus.MilvusClient, owned by the driver


def plan(cfg: JobConfig) -> Plan:
    """List shards, read the model's shape (no weights), open or create the collection.

    Every error found here (bad source, model, dimension or collection schema) stops the run
    before any embedding.
    """
    from cluster.milvus import CollectionSpec, ensure_collection
    from cluster.milvus.connect import connect
    from embedder.models.info import load_model_info
    from embedder.models.loader import SPARSE_HEAD_FILE, check_dense_dim

    shards = list_shards(cfg.source)
    info = load_model_info(cfg.model)
    if info.dim is None:
        raise ValueError(f"cannot tell the output dimension of {cfg.model.name} from its module configs")
    check_dense_dim(cfg.model, info.dim)
    if cfg.model.sparse is True and not info.has_sparse_head:
        raise ValueError(f"model.sparse is true but {cfg.model.name} has no {SPARSE_HEAD_FILE}; "
                         "use a BGE-M3-style model or set model.sparse: auto/false")
    if cfg.batch.max_tokens < info.max_seq_length:
        raise ValueError(f"batch.max_tokens {cfg.batch.max_tokens} is smaller than one full-length sequence "
                         f"({info.max_seq_length} tokens); raise it")
    spec = CollectionSpec(name=cfg.milvus.collection, dense_dim=cfg.model.dense_dim or info.dim,
                          has_sparse=info.has_sparse_head and cfg.model.sparse is not False,
                          store_text=cfg.milvus.store_text, text_max_length=cfg.milvus.text_max_length,
                          metadata=metadata_types(cfg, shards))
    client = connect(cfg.milvus)
    ensure_collection(client, spec)
    return Plan(shards=shards, spec=spec, client=client)


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


def run(cfg: JobConfig, the_plan: Plan) -> dict[str, object]:
    """Stream the dataset, write rows, report errors; returns the summary."""
    from cluster.milvus import BulkFileWriter, MilvusWriter, run_import
    from cluster.pipeline import build_dataset

    bulk = cfg.milvus.mode == "bulk_import"
    # bulk_import: parquet import files in the server's bucket, imported at the end (insert, not upsert).
    writer = BulkFileWriter(the_plan.spec, cfg.milvus) if bulk else MilvusWriter(the_plan.client, the_plan.spec,
                                                                                 cfg.milvus)
    tracker = RunTracker(the_plan.shards)
    last_log = time.monotonic()
    log.info("embedding %d shard(s) into %s (dense %d, sparse %s)", len(the_plan.shards), cfg.milvus.collection,
             the_plan.spec.dense_dim, the_plan.spec.has_sparse)
    for batch in build_dataset(cfg, the_plan.shards).iter_batches(batch_format="pyarrow", batch_size=None):
        tracker.observe(batch)
        errors = ~batch.column(c.ERROR).is_null().to_numpy(zero_copy_only=False)
        payload = ~errors & batch.column(SHARD_END).is_null().to_numpy(zero_copy_only=False)
        if payload.any():
            tracker.rows_written += writer.write(batch.filter(pa.array(payload)))
        for row in batch.filter(pa.array(errors)).select([c.SHARD, c.ROW, c.DOC_ID, c.ERROR]).to_pylist():
            log.warning("rejected: shard=%s row=%s doc_id=%s: %s", row[c.SHARD], row[c.ROW], row[c.DOC_ID],
                        row[c.ERROR])
        if time.monotonic() - last_log >= cfg.log_every_s:
            log.info(tracker.progress_line())
            last_log = time.monotonic()
    if bulk:
        files = writer.close()
        log.info("importing %d bulk file(s) into %s", len(files), cfg.milvus.collection)
        run_import(cfg.milvus, files, collection=cfg.milvus.collection)
    else:
        writer.flush()
    the_plan.client.close()
    summary = tracker.summary()
    log.info(tracker.progress_line())
    log.info("summary %s", json.dumps(summary))
    return summary


__all__ = ["Plan", "plan", "run"]
