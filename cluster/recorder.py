"""Recording durable shards in the manifest: the one place a shard becomes "done", fenced by the lease.

A sink (:mod:`cluster.sinks`) decides *when* a shard is durable (its rows upserted and confirmed,
or its import job completed); the :class:`ShardRecorder` records it: the id-kind check, then
``Manifest.mark_done``, and before a batch of records it reads the lease object, so that a run
that lost its lease to another records nothing more (fencing).
"""

from __future__ import annotations

import logging
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

    def check_lease(self, *, read: bool = False) -> None:
        """Raise LeaseLost when another run took the lease; ``read``: look at the lease object now (fencing)."""
        lease = self.plan.lease
        if lease is not None and (lease.lost or (read and not lease.verify())):
            raise LeaseLost(lease.lost)

    def record_all(self, paths: list[str]) -> None:
        """Record durable shards (a failed one is not recorded: the next run retries it)."""
        if not paths:
            return
        self.check_lease(read=True)
        for path in paths:
            self.record(path)

    def record(self, path: str) -> None:
        st = self.tracker.shards[path]
        self._check_id_kind(path, st.info.get("id_kinds") or [])
        if self.plan.manifest is None or not st.ok:
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

