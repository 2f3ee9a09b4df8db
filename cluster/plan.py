"""What a run will do, settled before any embedding: everything that can fail cheaply fails here.

:func:`plan` takes the target's lease, lists shards, reads the model's shape, opens (or starts)
Milvus and decides from the manifest what to do; :class:`cluster.run.Run` then streams the
pipeline (see there).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from cluster.manifest import (
    Lease,
    LeaseHeld,
    Manifest,
    ManifestCorrupt,
    Store,
    StoreUnreachable,
    job_identity,
    target_key,
)
from cluster.manifest.record_log import COMPACT_EVERY
from cluster.source import Shard, ShardError, list_shards, read_shard

if TYPE_CHECKING:
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")


@dataclass
class Plan:
    """What the run will do, settled before any embedding. :meth:`close` releases what it holds."""

    run_id: str
    shards: list[Shard]  # to process now
    spec: Any  # cluster.milvus.CollectionSpec
    client: Any  # pymilvus.MilvusClient of the driver (collection checks, final flush)
    milvus: Any  # the effective MilvusConfig (a local path replaced by the job's milvus-lite server)
    lite: Any = None  # cluster.milvus.lite.LiteServer started for this run
    lease: Lease | None = None
    manifest: Manifest | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # every manifest record, by shard path
    skipped: int = 0  # shards the manifest records as finished and unchanged
    vanished: list[str] = field(default_factory=list)  # recorded shards no longer in the source
    kept: list[str] = field(default_factory=list)  # recorded, unchanged shards skipped by this run
    replaces_rows: bool = False  # the collection existed: documents may have older, longer versions
    resumed_imports: int = 0  # bulk import groups of an earlier run completed during planning
    holder: dict[str, Any] | None = None  # what this run published as the collection's holder
    change: Any = None  # cluster.stages.unchanged.ChangeCheck: how read tasks tell unchanged documents

    def close(self) -> None:
        """Close the client, release the lease, stop the job's milvus-lite server (safe to call twice)."""
        try:
            if self.client is not None:
                self.client.close()
                self.client = None
        finally:
            try:
                if self.lease is not None:
                    self.lease.release()
                    self.lease = None
            finally:
                try:
                    self._release_holder()
                finally:
                    if self.lite is not None:
                        self.lite.stop()
                        self.lite = None

    def _release_holder(self) -> None:
        if self.holder is None:
            return
        from cluster.milvus.connect import connect
        from cluster.milvus.holder import release

        holder, self.holder = self.holder, None
        try:
            client = connect(self.milvus, dedicated=True)  # never a pooled one a failed connect broke
            try:
                release(client, self.spec.name, holder)
            finally:
                client.close()
        except Exception as e:  # noqa: BLE001 - a leftover holder goes stale by itself
            log.warning("could not clear the holder property of %s: %s", self.spec.name, e)


def plan(cfg: JobConfig) -> Plan:
    """Take the lease, list shards, read the model's shape (no weights), open or create the collection.

    The lease comes first, so that a second run on the same target is refused at once (before
    listing a large source), and it is renewed from then on. Every error found here (another run
    holding the target, a bad source, model, dimension or collection schema) stops the run before
    any embedding.
    """
    from cluster.milvus import CollectionSpec, ensure_collection
    from cluster.milvus.connect import connect
    from cluster.milvus.dense_types import check_supported
    from cluster.milvus.lite import LiteServer
    from cluster.milvus.writer import is_transient
    from cluster.retry import retry
    from embedder.models.fingerprint import model_fingerprint, vector_fingerprint
    from embedder.models.info import load_model_info, matryoshka_trained
    from embedder.models.loader import check_batch_budget, check_dense_dim, check_sparse

    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    store = checkpoint_store(cfg)
    lease = take_lease(cfg, store, run_id)
    the_plan = None
    try:
        shards = list_shards(cfg.source)
        info = load_model_info(cfg.model)
        if info.dim is None:
            raise ValueError(f"cannot tell the output dimension of {cfg.model.name} from its module configs")
        check_dense_dim(cfg.model, info.dim)
        check_sparse(cfg.model, info.has_sparse_head)
        check_batch_budget(cfg.batch.max_tokens, info.max_seq_length)
        dense_dim = cfg.model.dense_dim or info.dim
        has_sparse = info.has_sparse_head and cfg.model.sparse is not False
        model_fp = model_fingerprint(cfg.model, info.path)
        vector_fp = vector_fingerprint(cfg.model, cfg.chunking, model_fp=model_fp, dense_dim=dense_dim,
                                       sparse=has_sparse, passage_prompt=info.passage_prompt,
                                       max_seq_length=info.max_seq_length)
        dense_type = cfg.milvus.dense_type
        check_supported(dense_type, dense_dim, lite=cfg.milvus.is_lite, bulk=cfg.milvus.mode == "bulk_import",
                        version=None)
        if dense_dim < info.dim and not matryoshka_trained(info.path):
            log.warning("%s does not say it was trained for Matryoshka truncation, and model.dense_dim=%d cuts its "
                        "%d dimensions: measure the loss with python -m jobs.evaluate before a backfill",
                        cfg.model.name, dense_dim, info.dim)
        spec = CollectionSpec(name=cfg.milvus.collection, dense_dim=dense_dim, has_sparse=has_sparse,
                              store_text=cfg.milvus.store_text, text_max_length=cfg.milvus.text_max_length,
                              metadata=metadata_types(cfg, shards), dense_type=dense_type,
                              model={"name": cfg.model.name, "fingerprint": model_fp, "dense_dim": dense_dim,
                                     "dense_type": dense_type})
        the_plan = Plan(run_id=run_id, shards=shards, spec=spec, client=None, milvus=cfg.milvus, lease=lease)
        if cfg.milvus.is_lite:
            the_plan.lite = LiteServer(cfg.milvus).start()
            the_plan.milvus = the_plan.lite.effective()
        the_plan.client = connect(the_plan.milvus)
        if not cfg.milvus.is_lite:
            check_supported(dense_type, dense_dim, lite=False, bulk=False, version=the_plan.client.get_server_version())
        if dense_type == "int8":
            the_plan.spec = spec = _int8_spec(cfg, the_plan.client, spec)
        created = retry(lambda: ensure_collection(the_plan.client, spec), what="opening the collection",
                        is_transient=is_transient, for_s=min(cfg.milvus.outage_s, 60.0), logger=log)
        _hold_collection(the_plan)
        _plan_shards(cfg, the_plan, store, created=created)
        _plan_change_check(cfg, the_plan, vector_fp)
        return the_plan
    except BaseException:
        if the_plan is not None:
            the_plan.close()
        elif lease is not None:
            lease.release()
        raise


def _int8_spec(cfg: JobConfig, client: Any, spec: Any) -> Any:
    """The spec with its int8 scale: the one the collection records, else milvus.int8_scale (recorded at creation)."""
    from dataclasses import replace

    from cluster.milvus.schema import recorded_model

    recorded = None
    if client.has_collection(spec.name):
        recorded = (recorded_model(client.describe_collection(spec.name)) or {}).get("int8_scale")
    scale = recorded or cfg.milvus.int8_scale
    if scale is None:
        raise ValueError("milvus.dense_type int8 needs milvus.int8_scale: run python -m jobs.evaluate with this config "
                         "(its storage audit prints the scale calibrated on your pairs) and set it")
    if recorded and cfg.milvus.int8_scale is not None and abs(cfg.milvus.int8_scale - recorded) > 1e-9 * recorded:
        raise ValueError(f"milvus.int8_scale {cfg.milvus.int8_scale} differs from the {recorded} collection "
                         f"{spec.name!r} was written with; vectors of two scales cannot be compared: leave the "
                         "setting empty, or build a new collection with jobs.reindex")
    return replace(spec, int8_scale=float(scale), model={**dict(spec.model), "int8_scale": float(scale)})


def _hold_collection(the_plan: Plan) -> None:
    """Publish this run as the collection's holder (refused while another checkpoint storage's run holds it)."""
    import os
    import socket

    from cluster.milvus.connect import connect
    from cluster.milvus.holder import beat, claim

    lease = the_plan.lease
    if lease is None:
        return
    holder = {"run_id": the_plan.run_id, "lease": lease.uri, "host": socket.gethostname(), "pid": os.getpid(),
              "ttl_s": lease.ttl_s}
    claim(the_plan.client, the_plan.spec.name, holder)
    the_plan.holder = holder

    def refresh() -> None:
        client = connect(the_plan.milvus, dedicated=True)  # from the heartbeat thread: its own
        try:
            beat(client, the_plan.spec.name, holder)
        finally:
            client.close()

    lease.on_beat = refresh


def _plan_change_check(cfg: JobConfig, the_plan: Plan, vector_fp: str) -> None:
    """How read tasks tell unchanged documents: in incremental mode the id files' fingerprints (unless the
    previous run stopped half-way), and, when the collection may hold rows of this job, a lookup by primary key
    (the only source of a full run, which so restores rows deleted behind its back)."""
    from dataclasses import replace

    from cluster.milvus.schema import has_fingerprints
    from cluster.stages.unchanged import ChangeCheck

    fingerprints = has_fingerprints(the_plan.client.describe_collection(the_plan.spec.name))
    if not fingerprints:
        log.warning("collection %s has no %s field (made by an earlier version): documents of changed shards are "
                    "embedded again whole; rebuild it with jobs.reindex to skip unchanged documents",
                    the_plan.spec.name, "embed_fp")
        the_plan.spec = replace(the_plan.spec, fingerprints=False)
    trust = cfg.mode == "incremental"  # a full run makes sure the collection holds every document: it asks it
    if the_plan.manifest is not None:
        interrupted = the_plan.manifest.open_run(the_plan.run_id)
        if interrupted:
            log.info("run %s did not finish: documents are skipped as unchanged only once the collection confirms "
                     "their fingerprints", interrupted)
            trust = False
    lookup = the_plan.replaces_rows and fingerprints
    the_plan.change = ChangeCheck(vector_fp=vector_fp, trust_manifest=trust,
                                  milvus=the_plan.milvus if lookup else None, collection=the_plan.spec.name,
                                  outage_s=min(cfg.milvus.outage_s, 60.0))


def take_lease(cfg: JobConfig, store: Store | None, run_id: str) -> Lease | None:
    """The target's lease, held and renewed from now on (None without a checkpoint: nothing to hold it)."""
    if store is None:
        log.warning("no checkpoint.uri: nothing stops a second run on %s at the same time", cfg.milvus.collection)
        return None
    lease = Lease(store.child("leases"), target_key(cfg.milvus.uri, cfg.milvus.db_name, cfg.milvus.collection),
                  {"run_id": run_id, "mode": cfg.mode, "collection": cfg.milvus.collection},
                  ttl_s=cfg.checkpoint.lease_ttl_s)
    try:
        lease.acquire()
    except (LeaseHeld, ManifestCorrupt):
        raise
    except Exception as e:  # the first touch of the checkpoint storage: nothing was done yet
        raise StoreUnreachable(f"checkpoint.uri {store.uri} cannot be used: {type(e).__name__}: {e}. Check "
                               "checkpoint.uri and its storage options (checkpoint.storage_options, else "
                               "source.storage_options)") from e
    lease.start_heartbeat()
    return lease


def checkpoint_store(cfg: JobConfig) -> Store | None:
    if not cfg.checkpoint.uri:
        return None
    return Store(cfg.checkpoint.uri, cfg.checkpoint.storage_options or cfg.source.storage_options)


def _plan_shards(cfg: JobConfig, the_plan: Plan, store: Store | None, *, created: bool) -> None:
    """Which shards to process, from the manifest; bulk imports only into an empty (or its own) collection."""
    shards = the_plan.shards
    the_plan.replaces_rows = not created
    if store is None:
        _refuse_foreign_rows(cfg, the_plan, created, expected=0)
        return
    manifest = Manifest(store, job_identity(cfg))
    the_plan.manifest = manifest
    if cfg.mode == "full" and manifest.run_finished():
        if cfg.milvus.mode == "bulk_import" and not created:  # before the new generation: refused, nothing changes
            from cluster.bulkimport import refuse_reimport

            refuse_reimport(the_plan, manifest)
        log.info("the previous full run finished: starting over (mode: incremental skips unchanged shards)")
        manifest.start_generation()
    if cfg.milvus.mode == "bulk_import":
        from cluster.bulkimport import resume_imports

        the_plan.resumed_imports = resume_imports(cfg, manifest, the_plan)
    records = manifest.records()
    _refuse_foreign_rows(cfg, the_plan, created,
                         expected=sum(int(r.get("chunks") or 0) for r in records.values() if manifest.done(r)))
    if manifest.log.segments >= COMPACT_EVERY:  # left by runs that stopped: one index before this run adds more
        manifest.compact()
    garbage = manifest.collect_garbage(records)
    if garbage:
        log.info("removed %d id file(s) left by runs that stopped before recording", garbage)
    if cfg.mode == "full":
        todo = [s for s in shards if not (manifest.done(records.get(s.path))
                                          and Manifest.unchanged(records.get(s.path), s))]
    else:
        todo = [s for s in shards if not Manifest.unchanged(records.get(s.path), s)]
    if cfg.milvus.mode == "bulk_import":
        changed = [s.path for s in todo if manifest.done(records.get(s.path))]
        if changed:  # its rows are in the collection: importing the new version would insert a second copy
            raise ValueError(f"{len(changed)} shard(s) changed since this bulk_import run imported them (e.g. "
                             f"{changed[0]}); imports insert, so importing them again would leave the old rows "
                             "beside the new ones. Load the changed source into a new collection (jobs.reindex), "
                             "or use milvus.mode upsert, which replaces them")
    listed = {s.path for s in shards}
    todo_paths = {s.path for s in todo}
    if len(todo) < len(shards):
        log.info("manifest %s: %d of %d shard(s) already done and unchanged, skipped", manifest.uri,
                 len(shards) - len(todo), len(shards))
    the_plan.shards = todo
    the_plan.records = records
    the_plan.skipped = len(shards) - len(todo)
    the_plan.vanished = [p for p in records if p not in listed]
    the_plan.kept = [s.path for s in shards if s.path not in todo_paths]


def _refuse_foreign_rows(cfg: JobConfig, the_plan: Plan, created: bool, *, expected: int) -> None:
    """bulk_import inserts: only into a new collection, or one holding exactly the rows this job recorded."""
    if cfg.milvus.mode != "bulk_import" or created:
        return
    rows = int(the_plan.client.query(the_plan.spec.name, filter="", output_fields=["count(*)"])[0]["count(*)"])
    if rows != expected:
        raise ValueError(f"milvus.mode bulk_import inserts rows, and collection {the_plan.spec.name!r} holds {rows} "
                         f"while this job's manifest accounts for {expected}: import into a new collection "
                         "(jobs.reindex) or use milvus.mode upsert")


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


__all__ = ["Plan", "plan", "take_lease", "checkpoint_store", "metadata_types"]
