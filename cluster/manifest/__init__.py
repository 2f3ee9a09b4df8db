"""What makes runs resumable, incremental and exclusive: the per-shard manifest, id files, the lease.

* :class:`Store` (:mod:`.store`): atomic small objects on a local disk or S3;
* :class:`Manifest`, :func:`job_identity` (:mod:`.manifest`): finished shards per job identity;
* :mod:`.ids`: per-shard id files and streaming set operations on them;
* :class:`Lease`, :class:`LeaseHeld` (:mod:`.lease`): one run per target collection;
* :class:`AliasHistory` (:mod:`.alias_records`): where ``jobs.reindex`` pointed an alias.
"""

from __future__ import annotations

from cluster.manifest.alias_records import AliasHistory
from cluster.manifest.lease import Lease, LeaseHeld, target_key
from cluster.manifest.manifest import Manifest, job_identity, shard_key
from cluster.manifest.store import ManifestCorrupt, Store, StoreUnreachable

__all__ = ["AliasHistory", "Lease", "LeaseHeld", "Manifest", "ManifestCorrupt", "Store", "StoreUnreachable",
           "job_identity", "shard_key", "target_key"]
