"""Recording durable shards in the manifest: the one place a shard becomes "done", fenced by the lease.

A sink (:mod:`cluster.sinks`) decides *when* a shard is durable (its rows upserted and confirmed,
or its import job completed); the :class:`ShardRecorder` records it: the id-kind check, then
``Manifest.mark_done``, and before a batch of records it reads the lease object, so that a run
that lost its lease to another records nothing more (fencing).

Records of the upsert path are written by a background thread: :meth:`ShardRecorder.record_all`
queues the shards of a sink's checkpoint (every ``checkpoint.record_every_s``) and returns; what
is queued when the thread gets to it goes into one manifest segment, one PUT
(:mod:`cluster.manifest.record_log`). So the driver's stream loop never waits on object storage,
and the manifest gains at most one object per checkpoint, not one per shard (at 20-30 ms a call,
100,000 shards recorded one by one cost ~1 hour of PUTs). What the exactly-once argument needs is
kept: a shard is queued only once durable, a segment is written only after the lease object was
read, and :meth:`ShardRecorder.flush` (before the id pass, the repairs, the run's "finished"
state and on the failure path) waits for what is queued and raises what the thread met (a lost
lease). A record not yet written when the driver dies is a shard the next run redoes: the same as
a record not yet queued.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from cluster.errors import LeaseLost

if TYPE_CHECKING:
    from cluster.plan import Plan
    from cluster.progress import RunTracker

log = logging.getLogger("jobs.embed")


class ShardRecorder:
    """Records the shards of one run (``plan.shards``) as they become durable."""


    def __init__(self, the_plan: Plan, tracker: RunTracker) -> None:
        self.plan, self.tracker = the_plan, tracker
        self.by_path = {s.path: s for s in the_plan.shards}
        self.queued = 0  # shards queued and not yet written (or dropped after an error)
        self.written = 0  # segments written by the background thread
        self._queue: queue.Queue[list[str] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def check_lease(self, *, read: bool = False) -> None:
        """Raise LeaseLost when another run took the lease; ``read``: look at the lease object now (fencing).
        Also raises what the background thread met while recording."""
        if self._error is not None:
            raise self._error
        lease = self.plan.lease
        if lease is not None and (lease.lost or (read and not lease.verify())):
            raise LeaseLost(lease.lost)

    def record_all(self, paths: list[str]) -> None:
        """Queue durable shards for recording and return (a failed one is not recorded: the next run retries it)."""
        if not paths:
            return
        self.check_lease()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shard-recorder", daemon=True)
            self._thread.start()
        with self._idle:
            self.queued += len(paths)
        self._queue.put(list(paths))

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is written; raise what the thread met (LeaseLost, a storage error).

        Raises:
            TimeoutError: ``timeout_s`` passed with records still queued.
        """
        with self._idle:
            if not self._idle.wait_for(lambda: self.queued == 0, timeout=timeout_s):
                raise TimeoutError(f"{self.queued} shard record(s) still being written after {timeout_s} s")
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the background thread (after :meth:`flush`; records still queued are not written)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            paths = list(first)
            while True:  # what else is queued by now goes into the same segment
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                paths += more
            try:
                if paths and self._error is None:
                    self.check_lease(read=True)  # fencing: nothing is recorded after the lease is lost
                    self._write(paths)
                    self.written += 1
            except BaseException as e:  # noqa: BLE001 - raised to the driver by flush / check_lease
                log.warning("recording %d shard(s) failed: %s: %s", len(paths), type(e).__name__, e)
                self._error = e
            finally:
                with self._idle:
                    self.queued -= len(paths)
                    self._idle.notify_all()

    def _write(self, paths: list[str]) -> None:
        """One segment with the records of ``paths`` (id kinds checked in order: they update the manifest's state)."""
        done = []
        for path in paths:
            st = self.tracker.shards[path]
            self._check_id_kind(path, st.info.get("id_kinds") or [])
            if st.ok:
                done.append((self.by_path[path], st.manifest_counts(), st.info.get("ids")))
        if self.plan.manifest is not None and done:
            self.plan.manifest.mark_done(done, fence=lambda: self.check_lease(read=True))

    def record(self, paths: list[str]) -> None:
        """Record durable shards now, in this thread, in one segment (bulk import groups, as their jobs complete)."""
        self._write(paths)

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

