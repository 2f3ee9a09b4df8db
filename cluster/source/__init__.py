"""The source side: list document shards (local or s3://) and stream them as pyarrow batches.

Public API:

* :func:`list_shards` -> sorted :class:`Shard` list for a :class:`~cluster.settings.SourceConfig`;
* :func:`read_shard` -> iterator of ``pyarrow.Table`` batches (``cluster.contract.READ_COLUMNS``
  plus the metadata columns);
* :func:`filesystem` -> ``(fsspec filesystem, path)`` for a uri and storage options;
* :class:`ShardError` / :class:`SourceError`; :func:`retry` / :func:`is_transient`.
"""

from __future__ import annotations

from cluster.source.errors import ShardError, SourceError
from cluster.source.listing import ACCEPTED, Shard, format_of, list_shards
from cluster.source.readers import open_shard, read_shard
from cluster.source.storage_retry import is_transient, retry
from embedder.storage import filesystem, redact

__all__ = [
    "ACCEPTED", "Shard", "ShardError", "SourceError", "filesystem", "format_of", "is_transient", "list_shards",
    "open_shard", "read_shard", "redact", "retry",
]
