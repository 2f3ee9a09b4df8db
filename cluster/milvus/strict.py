"""Requests checked against a Milvus 2.6 server's rules before they are sent, and an optional journal.

milvus-lite accepts requests that a Milvus 2.6 server refuses (see
``shared/notes/milvus-server-vs-lite.md``): an upsert that repeats a primary key is refused by
the server with code 1100 ("duplicate primary keys are not allowed in the same batch"), and the
error is not transient, so every re-run would fail the same way. :class:`CheckedClient` wraps the
job's ``MilvusClient`` and refuses such a request itself (row dicts through ``upsert`` / ``insert``,
a pyarrow batch through ``upsert_table``), whatever the target, with the same code:
a run against milvus-lite fails where a run against a server would, and the tests see it.

With ``milvus.write_journal`` set, every upsert and delete request is also appended to a JSON-lines
file of this process under that folder (the primary keys sent), so that a test can count writes
per key (a shard written twice shows as keys written twice) instead of counting unique keys.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

from pymilvus import MilvusException

from cluster import contract as C

DUPLICATE_PK_CODE = 1100  # Milvus 2.6: duplicate primary keys are not allowed in the same batch


class CheckedClient:
    """A ``MilvusClient`` whose upserts and inserts are checked for repeated primary keys (other calls pass through)."""

    def __init__(self, client: Any, journal_dir: str | None = None) -> None:
        self._client = client
        self._journal: Any = None
        self._lock = threading.Lock()
        if journal_dir:
            os.makedirs(journal_dir, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._journal = open(os.path.join(journal_dir, name), "a", encoding="utf-8")  # noqa: SIM115

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upsert(self, collection_name: str, data: Any, **kwargs: Any) -> Any:
        self._check(data)
        out = self._client.upsert(collection_name, data, **kwargs)
        self._log("upsert", collection_name, [row[C.PK] for row in data])
        return out

    def insert(self, collection_name: str, data: Any, **kwargs: Any) -> Any:
        self._check(data)
        out = self._client.insert(collection_name, data, **kwargs)
        self._log("insert", collection_name, [row[C.PK] for row in data])
        return out

    def upsert_table(self, spec: Any, table: Any, *, send: Any, timeout: float | None = None) -> Any:
        """Upsert the rows of a pyarrow ``table``, checked alike: ``send(client, spec, table, timeout=...)`` sends
        them through the wrapped client (:func:`cluster.milvus.columns.upsert_table`, passed in by it)."""
        pks = table.column(C.PK).cast("string").to_pylist()
        self._check_keys(pks)
        out = send(self._client, spec, table, timeout=timeout)
        self._log("upsert", spec.name, pks)
        return out

    def delete(self, collection_name: str, ids: Any = None, **kwargs: Any) -> Any:
        out = self._client.delete(collection_name, ids=ids, **kwargs)
        if ids is not None:
            self._log("delete", collection_name, list(ids))
        return out

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    @classmethod
    def _check(cls, data: Any) -> None:
        cls._check_keys([row.get(C.PK) for row in data])

    @staticmethod
    def _check_keys(keys: list[Any]) -> None:
        if len(set(keys)) != len(keys):
            seen: set[Any] = set()
            repeated = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise MilvusException(code=DUPLICATE_PK_CODE,
                                  message=f"duplicate primary keys are not allowed in the same batch "
                                          f"(primary key {repeated!r}); a Milvus 2.6 server refuses this request")

    def _log(self, op: str, collection: str, keys: list[Any]) -> None:
        if self._journal is None:
            return
        with self._lock:
            self._journal.write(json.dumps({"op": op, "collection": collection, "pks": keys}) + "\n")
            self._journal.flush()


def journal_counts(folder: str, op: str = "upsert", collection: str | None = None) -> dict[str, int]:
    """How many times each primary key was sent with ``op``, over every journal file in ``folder``."""
    counts: dict[str, int] = {}
    if not os.path.isdir(folder):
        return counts
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:  # a line cut by a kill: its request was sent, the line not finished
                    continue
                if rec["op"] == op and (collection is None or rec["collection"] == collection):
                    for k in rec["pks"]:
                        counts[k] = counts.get(k, 0) + 1
    return counts
