"""The driver's side of the write stage: a pool of :class:`~cluster.stages.write.BlockWriter` actors.

The driver hands each embedded block's object reference to the least busy writer (in turn among
equally busy ones; at most ``in_flight`` calls per writer, so back-pressure reaches the pipeline)
and gets back small records. A record counts only once its writer confirmed it with a
:meth:`WriterPool.checkpoint` (the writer's dead letters are then written): records of an actor
that died and was restarted before confirming are reported as lost, so that their shards are not
recorded as done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.stages.write import BlockWriter, WriterSettings

log = logging.getLogger(__name__)


class WriterError(RuntimeError):
    """A write call failed (Milvus refused rows, or retries ran out): the run stops, resumable."""


@dataclass
class _Slot:
    actor: Any
    incarnation: str | None = None
    calls: dict[Any, str] = field(default_factory=dict)  # in-flight write refs -> "write"
    pending: list[dict[str, Any]] = field(default_factory=list)  # records not yet confirmed
    failed_calls: int = 0  # calls lost with a dying incarnation


class WriterPool:
    """``n`` writer actors; records flow to ``on_confirmed`` and lost ones to ``on_lost``.

    Args:
        settings: What every writer needs.
        n: Number of writers.
        cpus: CPUs each writer reserves (0: none, so writers never starve the read tasks).
        node_id: Pin the writers to this Ray node (the job's local milvus-lite server listens there).
        in_flight: Write calls queued per writer.
        on_confirmed: Called with each record once confirmed.
        on_lost: Called with the records of a writer incarnation that died before confirming them.
    """

    def __init__(self, settings: WriterSettings, n: int, *, cpus: float, node_id: str | None,
                 on_confirmed: Callable[[dict[str, Any]], None], on_lost: Callable[[list[dict[str, Any]]], None],
                 in_flight: int = 2, max_restarts: int = 3, start_timeout_s: float = 300.0) -> None:
        import ray

        options: dict[str, Any] = {"num_cpus": cpus, "max_restarts": max_restarts, "max_task_retries": 0,
                                   "max_concurrency": 1}
        self.max_restarts = max_restarts
        self.asked = f"{cpus} CPU" + (f" on node {node_id} (where the job's milvus-lite server runs)"
                                      if node_id else "")
        self.start_timeout_s = start_timeout_s
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        remote = ray.remote(BlockWriter).options(**options)
        self.slots = [_Slot(remote.remote(settings, i)) for i in range(n)]
        self.in_flight = in_flight
        self._last = -1  # the slot of the last submit
        self.on_confirmed, self.on_lost = on_confirmed, on_lost
        self.unconfirmed_rows = 0  # rows written whose records wait for a checkpoint (progress only)
        # Awaited at the first call, so that the writers start while the pipeline does.
        self._pings: list[Any] | None = [s.actor.ping.remote() for s in self.slots]

    def _ready(self) -> None:
        """The writers' first incarnations (a writer that cannot start fails the run here)."""
        if self._pings is None:
            return
        import ray

        pings, self._pings = self._pings, None
        ready, waiting = ray.wait(pings, num_returns=len(pings), timeout=self.start_timeout_s)
        if waiting:
            raise WriterError(f"{len(waiting)} of {len(pings)} writer actor(s) did not start within "
                              f"{self.start_timeout_s:.0f} s (cluster.writer_start_timeout_s); each asks for "
                              f"{self.asked}: check that the cluster has a node with those resources "
                              "(cluster.cpus_per_writer) and `ray status`")
        for slot, inc in zip(self.slots, ray.get(pings)):
            slot.incarnation = inc

    @property
    def busy(self) -> int:
        return sum(len(s.calls) for s in self.slots)

    def submit(self, block_ref: Any, *, wait_s: float = 1.0, tick: Callable[[], None] | None = None) -> None:
        """Give a block to the least busy writer, first waiting (and collecting records) while all are full."""
        self._ready()
        while min(len(s.calls) for s in self.slots) >= self.in_flight:
            self.collect(timeout=wait_s)
            if tick is not None:
                tick()
        # Least busy first; among equals, the one after the last chosen (an idle pool still spreads the blocks).
        n = len(self.slots)
        self._last = min(range(n), key=lambda i: (len(self.slots[i].calls), (i - self._last - 1) % n))
        slot = self.slots[self._last]
        slot.calls[slot.actor.write.remote(block_ref)] = "write"

    def collect(self, timeout: float = 0.0) -> int:
        """Take the records of finished write calls (waiting up to ``timeout`` for one); returns how many."""
        import ray

        refs = [r for s in self.slots for r in s.calls]
        if not refs:
            return 0
        first, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not first:
            return 0
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            slot = next(s for s in self.slots if ref in s.calls)
            del slot.calls[ref]
            try:
                rec = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                log.warning("writer %d died during a write (%s); its unconfirmed blocks cannot complete in this run",
                            self.slots.index(slot), type(e).__name__)
                self._lose(slot)
                slot.failed_calls += 1
                if slot.failed_calls > (self.max_restarts + 1) * self.in_flight:
                    raise WriterError(f"writer {self.slots.index(slot)} keeps dying ({slot.failed_calls} calls lost, "
                                      f"cluster.writer_max_restarts={self.max_restarts}); see its log (Ray's "
                                      "logs/worker-*.err) for the cause; finished shards are recorded, run again "
                                      "to resume") from e
                continue
            except ray.exceptions.RayTaskError as e:
                raise WriterError(str(e.cause) if getattr(e, "cause", None) else str(e)) from e
            if rec["incarnation"] != slot.incarnation:
                self._lose(slot)
                slot.incarnation = rec["incarnation"]
            slot.pending.append(rec)
            self.unconfirmed_rows += sum(s.get("rows_written", 0) for s in rec["shards"].values())
        return len(done)

    def _lose(self, slot: _Slot) -> None:
        if slot.pending:
            self.on_lost(slot.pending)
        slot.pending = []

    def drain(self, tick: Callable[[], None] | None = None) -> None:
        """Wait for every write call in flight."""
        while self.busy:
            self.collect(timeout=1.0)
            if tick is not None:
                tick()

    def checkpoint(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Have every writer write its dead letters (after its queued writes), then confirm its records."""
        results = self.call_all("checkpoint", timeout_s=timeout_s)
        self.collect(timeout=0)  # writes that finished before their checkpoint ran
        files: list[str] = []
        for slot, res in zip(self.slots, results):
            if res is None:
                continue
            if res["incarnation"] != slot.incarnation:  # restarted since its last records: those are lost
                self._lose(slot)
                slot.incarnation = res["incarnation"]
                continue
            confirmed = [r for r in slot.pending if r["incarnation"] == res["incarnation"]]
            slot.pending = [r for r in slot.pending if r["incarnation"] != res["incarnation"]]
            for rec in confirmed:
                self.unconfirmed_rows -= sum(s.get("rows_written", 0) for s in rec["shards"].values())
                self.on_confirmed(rec)
            files.extend(res["dead_files"])
        return {"dead_files": files}

    def call_all(self, method: str, *args: Any, timeout_s: float = 3600.0) -> list[Any]:
        """Call ``method`` on every writer (after its queued calls); a dead writer gives None."""
        import ray

        self._ready()
        refs = [getattr(s.actor, method).remote(*args) for s in self.slots]
        out = []
        for slot, ref in zip(self.slots, refs):
            try:
                out.append(ray.get(ref, timeout=timeout_s))
            except ray.exceptions.RayActorError:
                self._lose(slot)
                out.append(None)
        return out

    def close(self, graceful: bool = True) -> None:
        """Flush and stop the writers (``graceful=False``: kill them at once)."""
        import ray

        if graceful:
            try:
                self.call_all("close", timeout_s=60)
            except Exception as e:  # noqa: BLE001 - closing is best effort after a failure
                log.warning("closing the writers: %s", e)
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)

