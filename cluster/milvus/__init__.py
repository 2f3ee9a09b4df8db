"""The Milvus side of the job: connect, create/check the collection, write, search, bulk import.

Importing this package is cheap (no pymilvus); names are loaded from their modules on first use.
``connect`` and ``search`` are also module names, so import them from their modules:

* ``from cluster.milvus.connect import connect``: ``connect(cfg) -> MilvusClient``
* ``CollectionSpec``, ``ensure_collection(client, spec)`` (:mod:`.schema`)
* ``MilvusWriter(client, spec, cfg).write(table) / .flush()`` (:mod:`.writer`); its upsert requests are
  built column-wise (:mod:`.columns`), byte for byte what pymilvus builds from rows
* ``from cluster.milvus.search import search``: ``search(client, collection, dense=..., sparse=..., mode=...)``;
  ``rrf_fuse`` (:mod:`.search`)
* ``ImportFiles`` (:mod:`.importfiles`): parquet import files; ``ImportClient`` (:mod:`.imports`): the import REST API
* ``LiteServer`` (:mod:`.lite`): the run's own ``milvus-lite server`` for a local path
* errors: ``SchemaMismatchError``, ``MilvusConnectError``, ``MilvusWriteError``, ``BulkImportError``
  (:mod:`.errors`, light)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from cluster.milvus.errors import BulkImportError, MilvusConnectError, MilvusWriteError, SchemaMismatchError

_LAZY = {
    "CollectionSpec": "schema",
    "ensure_collection": "schema",
    "MilvusWriter": "writer",
    "rrf_fuse": "search",
    "ImportFiles": "importfiles",
    "ImportClient": "imports",
    "LiteServer": "lite",
}

__all__ = ["BulkImportError", "MilvusConnectError", "MilvusWriteError", "SchemaMismatchError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"cluster.milvus.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cluster.milvus' has no attribute {name!r}")
