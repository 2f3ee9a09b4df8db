"""The collection names the run writing it: a best-effort guard across checkpoint folders.

The lease (:mod:`cluster.manifest.lease`) keeps two runs that share a checkpoint storage off one
collection. Two runs with *different* checkpoint folders never meet there, so the holder is also
published on the collection itself, as the property ``embed.holder`` (run, host, pid, the lease
object's uri, heartbeat time). A run refuses a collection whose holder has another lease and a
heartbeat younger than its ttl. This is best effort, documented as such: reading and setting
the property is not atomic on Milvus (two runs starting within the same second can both pass),
and a run that reaches Milvus without this job's code does not look. The lease stays the guard
that is exact.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from cluster.manifest.lease import LeaseHeld

log = logging.getLogger(__name__)

HOLDER_PROPERTY = "embed.holder"


class CollectionHeld(LeaseHeld):
    """Another run, with another checkpoint storage, is writing the collection."""


def current_holder(client: Any, collection: str) -> dict[str, Any] | None:
    raw = (client.describe_collection(collection).get("properties") or {}).get(HOLDER_PROPERTY)
    if not raw:
        return None
    try:
        return dict(json.loads(raw))
    except (ValueError, TypeError):
        return None


def claim(client: Any, collection: str, holder: dict[str, Any], *, clock: Any = time.time) -> None:
    """Publish ``holder`` (with ``lease`` and ``ttl_s``) on the collection, unless another live run holds it."""
    other = current_holder(client, collection)
    now = clock()
    if other and other.get("lease") != holder["lease"]:
        age = now - float(other.get("heartbeat_at") or 0)
        if age < float(other.get("ttl_s") or holder["ttl_s"]):
            raise CollectionHeld(
                f"collection {collection!r} is being written by run {other.get('run_id', '?')} on host "
                f"{other.get('host', '?')} pid {other.get('pid', '?')} (its lease: {other.get('lease', '?')}; last "
                f"heartbeat {age:.0f} s ago), which uses another checkpoint storage than this run "
                f"({holder['lease']}). Wait for it to end; runs on one collection should share checkpoint.uri")
    beat(client, collection, holder, clock=clock)


def beat(client: Any, collection: str, holder: dict[str, Any], *, clock: Any = time.time) -> None:
    value = json.dumps({**holder, "heartbeat_at": clock()}, sort_keys=True)
    client.alter_collection_properties(collection, {HOLDER_PROPERTY: value})


def release(client: Any, collection: str, holder: dict[str, Any]) -> None:
    """Clear the property if it still names this run."""
    other = current_holder(client, collection)
    if other and other.get("run_id") == holder["run_id"]:
        client.alter_collection_properties(collection, {HOLDER_PROPERTY: ""})
