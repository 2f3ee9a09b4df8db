"""Point a readers' alias at a collection atomically, roll it back, drop what retention allows."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def alias_target(client: Any, alias: str) -> str | None:
    """The collection ``alias`` points at, or None when the alias does not exist."""
    if alias not in client.list_aliases().get("aliases", []):
        return None
    return str(client.describe_alias(alias)["collection_name"])


def point_alias(client: Any, alias: str, collection: str) -> str | None:
    """Move (or create) ``alias`` to ``collection`` in one server-side step; returns the previous target.

    Readers that query the alias see either the old or the new collection, never an error:
    Milvus swaps the alias atomically.
    """
    if client.has_collection(alias) and alias_target(client, alias) is None:
        raise ValueError(f"milvus.alias {alias!r} is the name of a real collection; choose another alias")
    previous = alias_target(client, alias)
    client.load_collection(collection)
    if previous is None:
        client.create_alias(collection, alias)
    elif previous != collection:
        client.alter_alias(collection, alias)
    log.info("alias %s -> %s (was %s)", alias, collection, previous)
    return previous


def drop_collections(client: Any, names: list[str], protect: set[str]) -> list[str]:
    """Drop ``names`` except the protected ones; returns what was dropped."""
    dropped = []
    for name in names:
        if name in protect or not client.has_collection(name):
            continue
        client.release_collection(name)
        client.drop_collection(name)
        dropped.append(name)
    return dropped
