"""The collections an alias has pointed at, oldest first (``<checkpoint.uri>/aliases/<alias>.json``)."""

from __future__ import annotations

from typing import Any

from cluster.manifest.store import Store


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
