"""Where embedded blocks go, and when a shard is durable: one protocol, two sinks.

The run loop (:mod:`cluster.run`) only streams block references into a :class:`Sink` and calls
:meth:`Sink.poll` between blocks and :meth:`Sink.finish` at the end; it never asks which mode it
is in. Each sink owns its writer pool (:mod:`cluster.writers`) and decides when a shard is
durable, then has the :class:`~cluster.recorder.ShardRecorder` record it:

* :class:`UpsertSink` (``milvus.mode: upsert``): a shard is durable once the writers confirmed
  every record of it (rows upserted, dead letters written) at a checkpoint;
* :class:`BulkImportSink` (``bulk_import``): once its import group's jobs completed on the
  server (:mod:`cluster.bulkimport`); before that, a confirmed shard only settles its group.

What is durable at each step, and what a re-run does, is argued in ``docs/exactly-once.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster import contract as c
from cluster.errors import RejectedInput

if TYPE_CHECKING:
    from cluster.plan import Plan
    from cluster.progress import RunTracker
    from cluster.recorder import ShardRecorder
    from cluster.stages.write import WriterSettings
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")


class Sink:
    """The writer pool of a run and the records it confirms (see :func:`make_sink`)."""

    def __init__(self, cfg: JobConfig, the_plan: Plan, tracker: RunTracker, recorder: ShardRecorder,
                 settings: WriterSettings, node_id: str | None) -> None:
        from cluster.writers import WriterPool

        self.cfg, self.plan, self.tracker, self.recorder = cfg, the_plan, tracker, recorder
        self.finished: list[str] = []  # shards whose records are all confirmed, not yet settled
        self.dead_files: list[str] = []
        self.last_checkpoint = time.monotonic()
        self.pool = WriterPool(settings, cfg.cluster.writer_count, cpus=cfg.cluster.cpus_per_writer, node_id=node_id,
                               on_confirmed=self._confirmed, on_lost=tracker.lose,
                               max_restarts=cfg.cluster.writer_max_restarts,
                               start_timeout_s=cfg.cluster.writer_start_timeout_s)

    @property
    def unconfirmed_rows(self) -> int:
        return self.pool.unconfirmed_rows

    def submit(self, block_ref: Any, tick: Callable[[], None]) -> None:
        """Hand a block to a writer (waiting, and calling ``tick``, while every writer is busy)."""
        self.pool.submit(block_ref, tick=tick)

    def poll(self) -> None:
        """Between blocks: a checkpoint every ``checkpoint.record_every_s``."""
        if time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint.record_every_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Writers write their dead letters and confirm their records; the shards they finish settle."""
        self.dead_files = self.pool.checkpoint()["dead_files"]
        self.last_checkpoint = time.monotonic()
        finished, self.finished = self.finished, []
        self._settle(finished)

    def finish(self, tick: Callable[[], None]) -> None:
        """After the stream: every write call in flight done, its shards settled (and, in bulk, imported)."""
        self.pool.drain(tick=tick)
        self.checkpoint()

    def salvage(self) -> None:
        """On the failure path: confirm what the writers already hold; record what that makes durable."""
        self.dead_files = self.pool.checkpoint(timeout_s=60)["dead_files"]
        finished, self.finished = self.finished, []
        self._settle_on_failure(finished)

    def close(self, *, graceful: bool) -> None:
        self.pool.close(graceful=graceful)

    # ---- per sink ----------------------------------------------------------------------------------
    def _settle(self, finished: list[str]) -> None:
        raise NotImplementedError

    def _settle_on_failure(self, finished: list[str]) -> None:
        raise NotImplementedError

    # ---- records -----------------------------------------------------------------------------------
    def _confirmed(self, rec: dict[str, Any]) -> None:
        self.finished.extend(self.tracker.add(rec))
        for sample in rec["reject_samples"]:
            if self.tracker.rejects <= 20:
                log.warning("rejected: shard=%s row=%s doc_id=%s: %s", sample[c.SHARD], sample[c.ROW],
                            sample[c.DOC_ID], sample[c.ERROR])
        if rec["rejects"] and self.cfg.errors.on_error == "fail":
            s = rec["reject_samples"][0]
            raise RejectedInput(f"rejected input with errors.on_error=fail: shard={s[c.SHARD]} row={s[c.ROW]} "
                                f"doc_id={s[c.DOC_ID]}: {s[c.ERROR]}")


class UpsertSink(Sink):
    """``milvus.mode: upsert``: a shard is durable once every record of it is confirmed."""

    def _settle(self, finished: list[str]) -> None:
        self.recorder.record_all(finished)

    def _settle_on_failure(self, finished: list[str]) -> None:
        self.recorder.record_all(finished)


class BulkImportSink(Sink):
    """``milvus.mode: bulk_import``: a shard is durable once its import group's jobs completed."""

    def __init__(self, cfg: JobConfig, the_plan: Plan, tracker: RunTracker, recorder: ShardRecorder,
                 settings: WriterSettings, node_id: str | None) -> None:
        from cluster.bulkimport import ImportGroups

        self.imports = ImportGroups(cfg, the_plan, tracker, record=recorder.record)
        super().__init__(cfg, the_plan, tracker, recorder, self.imports.writer_settings(settings), node_id)
        self.imports.pool = self.pool

    def poll(self) -> None:
        super().poll()
        self.imports.poll()

    def finish(self, tick: Callable[[], None]) -> None:
        super().finish(tick)
        unfinished = {p for p, s in self.tracker.shards.items() if s.lost or not s.done}
        self.imports.finish(unfinished, tick=tick)

    def _settle(self, finished: list[str]) -> None:
        if finished:
            self.recorder.check_lease(read=True)  # fencing: groups are recorded and jobs created below
        self.imports.settled(finished)  # shards are recorded once their import completed

    def _settle_on_failure(self, finished: list[str]) -> None:
        """Groups are not closed on the failure path: their shards are redone by the next run."""


def make_sink(cfg: JobConfig, the_plan: Plan, tracker: RunTracker, recorder: ShardRecorder,
              settings: WriterSettings, node_id: str | None) -> Sink:
    """The sink of ``milvus.mode`` (the one place that looks at it)."""
    kind = BulkImportSink if cfg.milvus.mode == "bulk_import" else UpsertSink
    return kind(cfg, the_plan, tracker, recorder, settings, node_id)
