"""One run of the pipeline, as the driver sees it: block references out, per-shard records in.

The loop takes embedded block references from Ray Data (``iter_internal_ref_bundles``: the
driver never fetches a block) and hands them to the writer pool; every
``checkpoint.record_every_s`` it has the writers confirm their records (dead letters written)
and records the shards they completed. State is per shard, never per document.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from cluster import contract as c
from cluster.driver import IncompleteRun, LeaseLost, Plan, RejectedInput, check_error_ratio
from cluster.progress import ProgressTimer, RunTracker
from cluster.stages.read import IdsSink, shard_items

if TYPE_CHECKING:
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")


class Run:
    """Executes a :class:`~cluster.driver.Plan` (one object per run)."""

    def __init__(self, cfg: JobConfig, the_plan: Plan) -> None:
        self.cfg, self.plan = cfg, the_plan
        self.tracker = RunTracker(the_plan.shards)
        self.tracker.shards_skipped = the_plan.skipped
        self.by_path = {s.path: s for s in the_plan.shards}
        self.finished: list[str] = []  # shards completed by confirmed records, not yet recorded
        self.last_record = time.monotonic()
        self.pool: Any = None
        self.imports: Any = None
        self.counter: Any = None
        self.dead_files: list[str] = []

    # ---- the loop --------------------------------------------------------------------------------
    def execute(self) -> dict[str, object]:
        cfg, p = self.cfg, self.plan
        log.info("embedding %d shard(s) into %s (dense %d, sparse %s) with %d writer(s)", len(p.shards),
                 cfg.milvus.collection, p.spec.dense_dim, p.spec.has_sparse, cfg.cluster.writer_count)
        timer = None
        failed = True
        try:
            if p.client is not None:  # the writers have their own; an idle one only draws keepalive complaints
                p.client.close()
                p.client = None
            if p.shards:
                timer = ProgressTimer(cfg.log_every_s, self._progress_line).start()
                self._start()
                self._stream()
                self.pool.drain(tick=self._tick)
                self._checkpoint()
                if self.imports is not None:
                    self.imports.finish(self._lost_shards())
            self._id_pass()
            check_error_ratio(cfg, self.tracker, final=True)
            self._check_complete()
            failed = False
        except BaseException as e:
            if self.pool is not None and not isinstance(e, LeaseLost):
                self._salvage()
            e.summary = self.tracker.summary()  # type: ignore[attr-defined]  # what was done before the failure
            raise
        finally:
            if timer is not None:
                timer.stop()
            self._stop(graceful=not failed)
        summary = self.tracker.summary()
        if p.manifest is not None and summary["shards_done"] == len(p.shards):
            p.manifest.set_finished(summary)
        log.info(self.tracker.progress_line())
        log.info("summary %s", json.dumps(summary))
        return summary

    def _start(self) -> None:
        import ray

        from cluster.pipeline import build_dataset
        from cluster.progress import ProgressCounter
        from cluster.stages.write import WriterSettings
        from cluster.writers import WriterPool

        cfg, p = self.cfg, self.plan
        node = ray.get_runtime_context().get_node_id() if p.lite is not None else None
        settings = WriterSettings(milvus=p.milvus, spec=p.spec, errors=cfg.errors,
                                  dead_letter_options=dict(cfg.checkpoint.storage_options or
                                                           cfg.source.storage_options),
                                  run_id=p.run_id, replaces_rows=p.replaces_rows)
        if cfg.milvus.mode == "bulk_import":
            from cluster.bulkimport import ImportGroups

            self.imports = ImportGroups(cfg, p, self.tracker, record=self._record)
            settings = self.imports.writer_settings(settings)
        self.pool = WriterPool(settings, cfg.cluster.writer_count, cpus=cfg.cluster.cpus_per_writer, node_id=node,
                               on_confirmed=self._confirmed, on_lost=self.tracker.lose)
        if self.imports is not None:
            self.imports.pool = self.pool
        self.counter = ray.remote(ProgressCounter).options(num_cpus=0).remote()
        ids, items = None, shard_items(p.shards, {}, {}, {})
        if p.manifest is not None:
            m = p.manifest
            ids = IdsSink(m.uri, dict(cfg.checkpoint.storage_options or cfg.source.storage_options))
            items = shard_items(p.shards, {s.path: (p.records.get(s.path) or {}).get("ids") for s in p.shards},
                                {s.path: m.ids_rel(s.path, p.run_id) for s in p.shards},
                                {s.path: m.pending_rel(s.path, p.run_id) for s in p.shards})
        self.dataset = build_dataset(cfg, items, ids, self.counter)

    def _stream(self) -> None:
        for bundle in self.dataset.iter_internal_ref_bundles():
            for ref in bundle.block_refs:
                self.pool.submit(ref, tick=self._tick)
            self._tick()

    def _tick(self) -> None:
        """Between blocks: lease check, periodic checkpoint and recording, import polling."""
        lease = self.plan.lease
        if lease is not None and lease.lost:
            raise LeaseLost(lease.lost)
        if time.monotonic() - self.last_record >= self.cfg.checkpoint.record_every_s:
            self._checkpoint()
        if self.imports is not None:
            self.imports.poll()

    # ---- records ---------------------------------------------------------------------------------
    def _confirmed(self, rec: dict[str, Any]) -> None:
        done = self.tracker.add(rec)
        self.finished.extend(done)
        for sample in rec["reject_samples"]:
            if self.tracker.rejects <= 20:
                log.warning("rejected: shard=%s row=%s doc_id=%s: %s", sample[c.SHARD], sample[c.ROW],
                            sample[c.DOC_ID], sample[c.ERROR])
        if rec["rejects"] and self.cfg.errors.on_error == "fail":
            s = rec["reject_samples"][0]
            raise RejectedInput(f"rejected input with errors.on_error=fail: shard={s[c.SHARD]} row={s[c.ROW]} "
                                f"doc_id={s[c.DOC_ID]}: {s[c.ERROR]}")

    def _checkpoint(self) -> None:
        """Writers write their dead letters and confirm their records; then finished shards are recorded."""
        self.dead_files = self.pool.checkpoint()["dead_files"]
        self.last_record = time.monotonic()
        finished, self.finished = self.finished, []
        if self.imports is not None:
            self.imports.settled(finished)  # recorded once their import completed
        else:
            for path in finished:
                self._record(path)
        check_error_ratio(self.cfg, self.tracker, final=False)

    def _record(self, path: str) -> None:
        st = self.tracker.shards[path]
        self._check_id_kind(path, st.info.get("id_kinds") or [])
        if self.plan.manifest is None or not st.ok:  # a failed shard is retried by the next run
            return
        self.plan.manifest.mark_done(self.by_path[path], st.manifest_counts(), st.info.get("ids"),
                                     self.plan.records.get(path))

    def _check_id_kind(self, path: str, kinds: list[str]) -> None:
        """Report a shard whose ids are of another kind (integer / string) than earlier shards'."""
        m = self.plan.manifest
        first = m.id_kind() if m is not None else None
        if len(kinds) > 1:
            self._id_mismatch(path, f"holds both {' and '.join(kinds)} ids")
        if not kinds:
            return
        if first is None:
            if m is not None:
                m.set_id_kind(kinds[0], path)
            return
        if any(k != first[0] for k in kinds):
            self._id_mismatch(path, f"has {'/'.join(kinds)} ids, earlier shards ({first[1]}) had {first[0]} ids")

    def _id_mismatch(self, path: str, what: str) -> None:
        self.tracker.id_kind_mismatch.append(path)
        log.warning("id kinds differ: shard %s %s; integer ids are stored as their decimal string, so 7 and '7' "
                    "name the same document", path, what)

    def _lost_shards(self) -> set[str]:
        return {p for p, s in self.tracker.shards.items() if s.lost or not s.done}

    def _check_complete(self) -> None:
        missing = sorted(self._lost_shards())
        if missing:
            raise IncompleteRun(f"{len(missing)} shard(s) could not be completed in this run (e.g. {missing[0]}): "
                                "a writer died, or their rows did not all arrive; they are not recorded, so running "
                                "the job again does them")

    # ---- the end ---------------------------------------------------------------------------------
    def _id_pass(self) -> None:
        """Cross-shard duplicates and delete_missing, in a Ray task reading the id files."""
        import ray

        from cluster.stages.idpass import IdPass, run_id_pass

        cfg, p, m = self.cfg, self.plan, self.plan.manifest
        if m is None:
            self.tracker.cross_shard_duplicates = None if len(p.shards) > 1 else 0
            return
        processed = [st.info["ids"] for st in self.tracker.shards.values() if st.ok and st.info.get("ids")]
        kept = [(p.records.get(path) or {}).get("ids") for path in p.kept]
        candidates: list[str] = []
        pending = m.pending() if cfg.delete_missing else []
        if cfg.delete_missing:
            candidates = pending + [r["ids"] for path in p.vanished if (r := p.records[path]).get("ids")]
        if len(processed) < 2 and not candidates:
            return
        job = IdPass(store_uri=m.uri, storage_options=dict(cfg.checkpoint.storage_options or
                                                           cfg.source.storage_options),
                     processed=processed, kept=[k for k in kept if k], candidates=candidates,
                     count_duplicates=len(processed) > 1, delete=bool(candidates), milvus=p.milvus, spec=p.spec,
                     errors_uri=cfg.errors.uri, errors_options=dict(cfg.source.storage_options), run_id=p.run_id)
        options: dict[str, Any] = {"num_cpus": 0.5, "max_retries": 0}
        if p.lite is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                node_id=ray.get_runtime_context().get_node_id(), soft=False)
        result = ray.get(ray.remote(run_id_pass).options(**options).remote(job))
        if result["distinct"] is not None:
            total = sum(int(st.info.get("docs_unique") or 0) for st in self.tracker.shards.values() if st.ok)
            self.tracker.cross_shard_duplicates = total - result["distinct"]
        self.tracker.docs_deleted = result["docs_deleted"]
        self.tracker.chunks_deleted = result["chunks_deleted"]
        self.tracker.delete_failures = result["delete_failures"]
        if cfg.delete_missing:
            if result["docs_deleted"]:
                log.info("deleted the chunks of %d document(s) no longer in the source", result["docs_deleted"])
            for path in p.vanished:
                m.forget(p.records[path])
            m.clear_pending(pending)

    def _salvage(self) -> None:
        """On the failure path: writes in flight finish, dead letters are written, finished shards recorded.

        The stream is abandoned (no new block is handed out); what the writers already hold is
        confirmed so that a re-run does not redo it. Bulk import groups are not closed: their shards
        are redone by the next run.
        """
        try:
            self.dead_files = self.pool.checkpoint(timeout_s=60)["dead_files"]
            finished, self.finished = self.finished, []
            if self.imports is None:
                for path in finished:
                    self._record(path)
        except BaseException as e:  # noqa: BLE001 - best effort: the original failure is what is reported
            log.warning("while stopping, could not record the last finished shards: %s", e)

    def _stop(self, *, graceful: bool) -> None:
        if self.pool is not None:
            try:
                self.pool.close(graceful=graceful)
            finally:
                self.pool = None
        if self.counter is not None:
            import ray

            ray.kill(self.counter)
            self.counter = None

    def _progress_line(self) -> str:
        import ray

        if self.counter is not None:
            try:
                self.tracker.read = ray.get(self.counter.get.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - the line shows what is known
                pass
        return self.tracker.progress_line(self.pool.unconfirmed_rows if self.pool is not None else 0)
