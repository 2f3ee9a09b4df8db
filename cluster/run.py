"""One run of the pipeline, as the driver sees it: block references out, per-shard records in.

``Run(cfg, plan).execute()`` runs a :class:`cluster.plan.Plan`. The loop takes embedded block
references from Ray Data (``iter_internal_ref_bundles``: the driver never fetches a block) and
streams them into the run's sink (:mod:`cluster.sinks`: upsert or bulk import, the same loop for
both), which owns the writer actors, decides when a shard is durable and has it recorded
(:mod:`cluster.recorder`). At the end the id pass (duplicates, ``delete_missing``) runs as a Ray
task, then the repair of ids held by several shards. State is per shard, never per document.
What is durable at each step, and what a re-run does, is argued in ``docs/exactly-once.md``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from cluster.errors import DeleteRefused, IncompleteRun, LeaseLost, RejectedInput
from cluster.progress import ProgressTimer, RunTracker
from cluster.recorder import ShardRecorder
from cluster.stages.read import IdsSink, shard_items

if TYPE_CHECKING:
    from cluster.plan import Plan
    from cluster.sinks import Sink
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")


class Run:
    """Executes a :class:`~cluster.plan.Plan` (one object per run)."""

    def __init__(self, cfg: JobConfig, the_plan: Plan) -> None:
        self.cfg, self.plan = cfg, the_plan
        self.tracker = RunTracker(the_plan.shards)
        self.tracker.shards_skipped = the_plan.skipped
        self.by_path = {s.path: s for s in the_plan.shards}
        self.recorder = ShardRecorder(the_plan, self.tracker)
        self.sink: Sink | None = None
        self.counter: Any = None

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
                self.sink.finish(tick=self._check_lease)  # type: ignore[union-attr]
                self.recorder.flush()  # every record written before the id pass looks at them
                check_error_ratio(cfg, self.tracker, final=False)
            self._check_lease()
            self._id_pass()
            self._repair()
            check_error_ratio(cfg, self.tracker, final=True)
            self._check_complete()
            failed = False
        except BaseException as e:
            if self.sink is not None and not isinstance(e, LeaseLost):
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
        from cluster.progress import read_progress
        from cluster.sinks import make_sink
        from cluster.stages.write import WriterSettings

        cfg, p = self.cfg, self.plan
        node = ray.get_runtime_context().get_node_id() if p.lite is not None else None
        settings = WriterSettings(milvus=p.milvus, spec=p.spec, errors=cfg.errors,
                                  dead_letter_options=dict(cfg.checkpoint.storage_options or
                                                           cfg.source.storage_options),
                                  run_id=p.run_id, replaces_rows=p.replaces_rows)
        self.sink = make_sink(cfg, p, self.tracker, self.recorder, settings, node)
        self.counter = read_progress(p.run_id)
        ids, items = None, shard_items(p.shards, {}, {}, {})
        if p.manifest is not None:
            m = p.manifest
            ids = IdsSink(m.uri, dict(cfg.checkpoint.storage_options or cfg.source.storage_options))
            items = shard_items(p.shards, {s.path: (p.records.get(s.path) or {}).get("ids") for s in p.shards},
                                {s.path: m.ids_rel(s.path, p.run_id) for s in p.shards},
                                {s.path: m.pending_rel(s.path, p.run_id) for s in p.shards})
        self.dataset = build_dataset(cfg, items, ids, self.counter, metadata_types=dict(p.spec.metadata),
                                     change=p.change)

    def _stream(self) -> None:
        assert self.sink is not None
        for bundle in self.dataset.iter_internal_ref_bundles():
            for ref in bundle.block_refs:
                self.sink.submit(ref, tick=self._tick)
            self._tick()

    def _check_lease(self, *, read: bool = False) -> None:
        """Raise LeaseLost when another run took the lease; ``read``: look at the lease object now (fencing)."""
        self.recorder.check_lease(read=read)

    def _tick(self) -> None:
        """Between blocks: lease check; the sink's checkpoints, recording and import polling."""
        self._check_lease()
        assert self.sink is not None
        self.sink.poll()
        check_error_ratio(self.cfg, self.tracker, final=False)

    def _lost_shards(self) -> set[str]:
        return {p for p, s in self.tracker.shards.items() if s.lost or not s.done}

    def _check_complete(self) -> None:
        missing = sorted(self._lost_shards())
        if missing:
            raise IncompleteRun(f"{len(missing)} shard(s) could not be completed in this run (e.g. {missing[0]}): "
                                "a writer died, their rows did not all arrive, or their import group failed (see the "
                                "errors above); they are not recorded, so running the job again does them")

    # ---- the end ---------------------------------------------------------------------------------
    def _id_pass(self) -> None:
        """Cross-shard duplicates and delete_missing, in a Ray task reading the id files.

        Deletions run only with full knowledge: every shard of this run is done (a document that left
        a vanished shard may have moved into one that failed or was lost), and they stay within
        ``delete_missing_max_ratio`` of the documents the manifest knows. Otherwise the candidates
        stay pending (vanished shards stay recorded) for the next run. Vanished shards are forgotten
        and pending files cleared only after every deletion succeeded.
        """
        cfg, p, m = self.cfg, self.plan, self.plan.manifest
        if m is None:
            self.tracker.cross_shard_duplicates = None if len(p.shards) > 1 else 0
            return
        done = [(path, st.info["ids"]) for path, st in self.tracker.shards.items() if st.ok and st.info.get("ids")]
        processed = [rel for _, rel in done]
        kept = [(p.records.get(path) or {}).get("ids") for path in p.kept]
        pending = m.pending() if cfg.delete_missing else []
        candidates = pending + [r["ids"] for path in p.vanished if (r := p.records[path]).get("ids")] \
            if cfg.delete_missing else []
        unfinished = [path for path, st in self.tracker.shards.items() if not st.ok]
        if candidates and unfinished:
            log.warning("delete_missing held back: %d shard(s) of this run did not complete (e.g. %s), and documents "
                        "that left other shards may have moved there; the deletions stay pending for a run in which "
                        "every shard completes", len(unfinished), unfinished[0])
            self.tracker.deletes_held = len(candidates)
            candidates = []
        if len(processed) < 2 and not candidates:
            return
        known = sum(int(r.get("docs_unique") or r.get("docs") or 0) for r in p.records.values() if m.done(r))
        result = self._run_id_pass(processed, [k for k in kept if k], candidates,
                                   max_delete=int(cfg.delete_missing_max_ratio * known),
                                   processed_paths=[path for path, _ in done])
        if result["repairs"]:
            self._record_repairs(result["repairs"])
        if result["distinct"] is not None:
            total = sum(int(st.info.get("docs_unique") or 0) for st in self.tracker.shards.values() if st.ok)
            self.tracker.cross_shard_duplicates = total - result["distinct"]
        if result.get("refused"):
            self.tracker.deletes_held = len(candidates)
            raise DeleteRefused(
                f"delete_missing would delete {result['refused']} document(s), more than delete_missing_max_ratio="
                f"{cfg.delete_missing_max_ratio} of the {known} the manifest knows; nothing was deleted. If the "
                "source listing is right (not a partial sync or a wrong prefix), raise delete_missing_max_ratio "
                "(e.g. --set delete_missing_max_ratio=1) and run again")
        self.tracker.docs_deleted = result["docs_deleted"]
        self.tracker.chunks_deleted = result["chunks_deleted"]
        self.tracker.delete_failures = result["delete_failures"]
        if not candidates:
            return
        if result["docs_deleted"]:
            log.info("deleted the chunks of %d document(s) no longer in the source", result["docs_deleted"])
        if result["delete_failures"]:
            log.error("%d deletion(s) failed; the vanished shards and pending deletions stay recorded and the next "
                      "run tries them again", result["delete_failures"])
            return
        self._check_lease(read=True)  # fencing: only the lease holder changes the manifest
        m.forget(p.vanished)
        m.clear_pending(pending)

    def _run_id_pass(self, processed: list[str], kept: list[str], candidates: list[str],
                     max_delete: int, processed_paths: list[str]) -> dict[str, Any]:
        import ray

        from cluster.stages.idpass import IdPass, run_id_pass

        cfg, p, m = self.cfg, self.plan, self.plan.manifest
        assert m is not None
        self._check_lease(read=bool(candidates))  # fencing: only the lease holder deletes
        job = IdPass(store_uri=m.uri, storage_options=dict(cfg.checkpoint.storage_options or
                                                           cfg.source.storage_options),
                     processed=processed, processed_paths=processed_paths, kept=kept, candidates=candidates,
                     count_duplicates=len(processed) > 1,
                     delete=bool(candidates), max_delete=max_delete, milvus=p.milvus, spec=p.spec,
                     errors_uri=cfg.errors.uri, errors_options=dict(cfg.source.storage_options), run_id=p.run_id)
        options: dict[str, Any] = {"num_cpus": 0.5, "max_retries": 0}
        if p.lite is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                node_id=ray.get_runtime_context().get_node_id(), soft=False)
        return ray.get(ray.remote(run_id_pass).options(**options).remote(job))

    # ---- ids found in several shards -------------------------------------------------------------
    def _record_repairs(self, files: dict[str, str]) -> None:
        """Record the repairs before doing them: a run that dies before they are done leaves them to the next."""
        m = self.plan.manifest
        assert m is not None
        self._check_lease(read=True)
        repairs = m.repairs()
        for path, rel in files.items():
            s = self.by_path[path]
            old = repairs.get(path)
            if old and old["file"] != rel:
                m.store.delete(old["file"])
            repairs[path] = {"file": rel, "format": s.format, "size": s.size, "version": s.version}
        m.put_repairs(repairs)

    def _repair(self) -> None:
        """Write again, after everything else, the winning version of each id held by several shards.

        Within a run the version in the shard whose path sorts last wins, whatever order the writers
        wrote in: its chunks are upserted once more, after the stream, and chunks beyond its count
        that a longer version left are deleted by key (in bulk-import mode, where both versions were
        inserted, the upsert replaces both rows of each key). Recorded repairs of an earlier run
        whose shard is unchanged are done too; a shard that changed or vanished since is not repaired
        (the run that processes it decides again).
        """
        import ray

        from cluster.pipeline import build_dataset
        from cluster.source import Shard
        from cluster.stages.read import IdsSink, shard_items
        from cluster.stages.write import WriterSettings
        from cluster.writers import WriterPool

        cfg, p, m = self.cfg, self.plan, self.plan.manifest
        if m is None:
            return
        repairs = m.repairs()
        if not repairs:
            return
        shards, stale = [], []
        kept = set(p.kept)
        for path, e in repairs.items():
            now = self.by_path.get(path)  # processed in this run
            if now is not None:
                fresh = self.tracker.shards[path].ok and (now.size, now.version) == (e["size"], e["version"])
            else:
                rec = p.records.get(path) or {}
                fresh = path in kept and (rec.get("size"), rec.get("version")) == (e["size"], e["version"])
            if fresh:
                shards.append(Shard(path=path, format=e["format"], size=e["size"], version=e["version"]))
            else:
                stale.append(path)
        if stale:
            log.info("%d recorded repair(s) dropped: their shard changed or vanished since", len(stale))
        rows = 0
        if shards:
            log.info("writing again the winning versions of ids held by several shards (%d shard(s))", len(shards))
            node = ray.get_runtime_context().get_node_id() if p.lite is not None else None
            settings = WriterSettings(milvus=p.milvus, spec=p.spec, errors=cfg.errors, dead_letter_options={},
                                      run_id=f"{p.run_id}-repair", replaces_rows=True)
            lost: list[Any] = []
            written: list[int] = []
            pool = WriterPool(settings, 1, cpus=cfg.cluster.cpus_per_writer, node_id=node,
                              on_confirmed=lambda rec: written.append(
                                  sum(s.get("rows_written", 0) for s in rec["shards"].values())),
                              on_lost=lost.extend, max_restarts=0,
                              start_timeout_s=cfg.cluster.writer_start_timeout_s)
            try:
                items = shard_items(shards, {}, {}, {}, {s.path: repairs[s.path]["file"] for s in shards})
                ids = IdsSink(m.uri, dict(cfg.checkpoint.storage_options or cfg.source.storage_options))
                dataset = build_dataset(cfg, items, ids, None, metadata_types=dict(p.spec.metadata), change=p.change)
                for bundle in dataset.iter_internal_ref_bundles():
                    for ref in bundle.block_refs:
                        pool.submit(ref, tick=self._check_lease)
                pool.drain(tick=self._check_lease)
                pool.checkpoint()
            finally:
                pool.close(graceful=True)
            if lost:
                raise IncompleteRun("the writer of the repair pass died; the repairs stay recorded and the next "
                                    "run does them")
            rows = sum(written)
        self._check_lease(read=True)
        m.clear_repairs(repairs)
        self.tracker.repaired_rows = rows

    def _salvage(self) -> None:
        """On the failure path: writes in flight finish, dead letters are written, finished shards recorded.

        The stream is abandoned (no new block is handed out); what the writers already hold is
        confirmed so that a re-run does not redo it. Bulk import groups are not closed: their shards
        are redone by the next run.
        """
        try:
            self.sink.salvage()  # type: ignore[union-attr]
            self.recorder.flush(timeout_s=60)
        except BaseException as e:  # noqa: BLE001 - best effort: the original failure is what is reported
            log.warning("while stopping, could not record the last finished shards: %s", e)

    def _stop(self, *, graceful: bool) -> None:
        self.recorder.close()
        if self.sink is not None:
            try:
                self.sink.close(graceful=graceful)
            finally:
                self.sink = None
        if self.counter is not None:
            self.counter.close()  # the actor stays for this driver's next run
            self.counter = None

    def _progress_line(self) -> str:
        if self.counter is not None:
            try:
                self.tracker.read = self.counter.get(timeout_s=5)
            except Exception:  # noqa: BLE001 - the line shows what is known
                pass
        return self.tracker.progress_line(self.sink.unconfirmed_rows if self.sink is not None else 0)


def check_error_ratio(cfg: JobConfig, tracker: RunTracker, *, final: bool) -> None:
    if final and tracker.shards and tracker.shards_failed == len(tracker.shards):
        raise RejectedInput(f"every shard ({len(tracker.shards)}) failed to read; see the dead-letter files under "
                            f"{cfg.errors.uri} or the log")
    read = tracker.docs_read
    if read and (final or read >= 1000) and tracker.docs_failed / read > cfg.errors.max_error_ratio:
        raise RejectedInput(f"{tracker.docs_failed} of {read} documents rejected, more than errors.max_error_ratio="
                            f"{cfg.errors.max_error_ratio}; see the dead-letter files under {cfg.errors.uri}")
