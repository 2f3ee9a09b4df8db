"""What ``jobs.reindex`` records per alias, next to the manifests (``<checkpoint.uri>/aliases/``).

* ``<alias>.json`` (:class:`AliasHistory`): the collections the alias has pointed at, oldest first;
* ``<alias>.build.json`` (:class:`AliasBuilds`): the build in progress (its collection, the job
  identity that produced it, how far it got) and the builds abandoned since the last swap.

Both are written whole and atomically with :class:`~cluster.manifest.store.Store`.
"""

from __future__ import annotations

import time
from typing import Any

from cluster.manifest.store import Store

BUILDING, VALIDATED = "building", "validated"


class AliasHistory:
    """History of one alias, written atomically next to the manifests."""

    def __init__(self, uri: str, storage_options: dict[str, Any], alias: str) -> None:
        self.store = Store(uri, storage_options)
        self.rel = f"aliases/{alias}.json"
        self.path = self.store.uri_of(self.rel)

    def load(self) -> list[dict[str, Any]]:
        return list(self.store.get_json(self.rel) or [])

    def save(self, entries: list[dict[str, Any]]) -> None:
        self.store.put_json(self.rel, entries)


class AliasBuilds:
    """The build in progress behind one alias, and the builds abandoned since the last swap.

    The object is ``{"current": {"collection", "identity", "started_at", "state"} | null,
    "abandoned": [{"collection", "identity", "started_at", "state", "reason", "at"}]}``:

    * ``current`` is written before the build's first write (the collection is created by the
      plan), so that a re-run of the same job identity continues that collection; ``state`` is
      ``building`` until the build passed validation, then ``validated`` (only the swap is left);
      it is cleared by the swap.
    * ``abandoned``: builds superseded by another one, or that failed validation; retention drops
      them after the next successful swap (and logs each).
    """

    def __init__(self, uri: str, storage_options: dict[str, Any], alias: str) -> None:
        self.store = Store(uri, storage_options)
        self.rel = f"aliases/{alias}.build.json"
        self.path = self.store.uri_of(self.rel)

    def load(self) -> dict[str, Any]:
        data = self.store.get_json(self.rel) or {}
        return {"current": data.get("current"), "abandoned": list(data.get("abandoned") or [])}

    def save(self, data: dict[str, Any]) -> None:
        self.store.put_json(self.rel, data)

    def start(self, collection: str, identity: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Record ``collection`` as the build in progress; returns ``(kept, superseded)``.

        ``kept``: the recorded build when it is this one (same collection and identity: a re-run
        continues it, its state unchanged); ``superseded``: the recorded build this one replaces
        (moved to ``abandoned``), if any.
        """
        data = self.load()
        current, superseded = data["current"], None
        if current and current.get("collection") == collection and current.get("identity") == identity:
            kept = current
        else:
            kept = None
            if current and current.get("collection") != collection:
                superseded = {**current, "reason": f"superseded by the build of {collection}", "at": time.time()}
                data["abandoned"].append(superseded)
            data["current"] = {"collection": collection, "identity": identity, "started_at": time.time(),
                               "state": BUILDING}
        data["abandoned"] = [a for a in data["abandoned"] if a.get("collection") != collection]
        self.save(data)
        return kept, superseded

    def set_state(self, collection: str, state: str) -> None:
        """Move the build in progress on (only if it is still ``collection``)."""
        data = self.load()
        if (data["current"] or {}).get("collection") == collection:
            data["current"] = {**data["current"], "state": state, f"{state}_at": time.time()}
            self.save(data)

    def abandon(self, collection: str, reason: str) -> None:
        """The build of ``collection`` cannot be used: no re-run continues it; retention drops it later."""
        data = self.load()
        current = data["current"] or {}
        if current.get("collection") == collection:
            data["current"] = None
            data["abandoned"] = [a for a in data["abandoned"] if a.get("collection") != collection]
            data["abandoned"].append({**current, "reason": reason, "at": time.time()})
            self.save(data)
