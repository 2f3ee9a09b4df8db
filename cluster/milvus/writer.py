"""Upsert embedded chunks into Milvus, in bounded requests, retrying transient failures.

Primary keys are deterministic (``doc_id#chunk_index``), so writes are upserts and a re-run
(or a retried request) never duplicates a chunk. Each request is built column-wise from the batch
(:mod:`cluster.milvus.columns`): the bytes pymilvus would build from row dicts, for a fraction of the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pymilvus import MilvusClient, MilvusException, MilvusUnavailableException

from cluster import contract as C
from cluster.milvus import payload as R
from cluster.milvus.columns import upsert_table
from cluster.milvus.connect import token_of
from cluster.milvus.errors import MilvusWriteError, redact, secrets_of
from cluster.milvus.schema import CollectionSpec
from cluster.retry import retry
from cluster.settings import MilvusConfig

log = logging.getLogger(__name__)

_TRANSIENT_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
_TRANSIENT_WORDS = ("unavailable", "connection refused", "fail connecting", "failed to connect", "retry timeout",
                    "deadline exceeded", "rate limit", "connection reset", "socket closed", "not ready")
_CONNECT_FAILED, _RATE_LIMIT = 2, 8


def is_transient(error: BaseException) -> bool:
    """Whether retrying the same request later may succeed (server down, restarting, overloaded)."""
    if isinstance(error, (MilvusUnavailableException, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        return error.code() in _TRANSIENT_GRPC
    if isinstance(error, MilvusException):
        if getattr(error, "is_input_error", False):
            return False
        if getattr(error, "retriable", False) or error.code in _TRANSIENT_GRPC:
            return True
        if error.code in (_CONNECT_FAILED, _RATE_LIMIT):
            return True
        return any(word in str(error.message).lower() for word in _TRANSIENT_WORDS)
    return False


def split_requests(row_bytes: np.ndarray, max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
    """Cut rows into consecutive ``[start, end)`` requests of at most ``max_rows`` rows and ``max_bytes`` bytes.

    A single row larger than ``max_bytes`` goes alone in its request.
    """
    spans: list[tuple[int, int]] = []
    start, n = 0, len(row_bytes)
    while start < n:
        window = np.cumsum(row_bytes[start:start + max_rows])
        take = max(int(np.searchsorted(window, max_bytes, side="right")), 1)
        spans.append((start, start + take))
        start += take
    return spans


def last_per_key(table: pa.Table) -> pa.Table:
    """One row per primary key, the last one (a Milvus 2.6 server refuses a request that repeats a key).

    Within a shard the read stage already keeps one row per document; two shards that hold the same
    document id can still meet in one block: the row that comes last in the block is written.
    """
    pks = table.column(C.PK)
    if pc.count_distinct(pks).as_py() == table.num_rows:
        return table
    idx = pa.table({"k": pks, "i": pa.array(np.arange(table.num_rows))}).group_by("k").aggregate([("i", "max")])
    keep = np.sort(idx.column("i_max").to_numpy())
    log.info("%d row(s) repeat a primary key of the same block (one document id in two shards); the last is written",
             table.num_rows - len(keep))
    return table.take(pa.array(keep))


class MilvusWriter:
    """Writes embedded batches into one collection with ``upsert``.

    Rows whose ``error`` column is non-null are skipped (not written, not counted): the caller
    reports them in the dead-letter output. Pass whole batches; :meth:`write` filters them.

    Args:
        client: An open client.
        spec: The collection (already created / checked by ``ensure_collection``).
        cfg: ``milvus`` settings: write_batch_rows and max_request_bytes bound each request.
        attempts: Tries per request when the failure is transient; default: retry for
            ``cfg.outage_s`` seconds instead of a number of times.
        initial_delay: Seconds before the first retry; doubled each retry ...
        max_delay: ... up to this.
        request_timeout: Seconds one request may take (pymilvus also retries inside that time).
        sleep: Sleep function (tests pass a fake).
    """

    def __init__(self, client: MilvusClient, spec: CollectionSpec, cfg: MilvusConfig, *, attempts: int | None = None,
                 initial_delay: float = 0.5, max_delay: float = 15.0, request_timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if attempts is not None and attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.client, self.spec, self.cfg = client, spec, cfg
        self.attempts, self.initial_delay, self.max_delay = attempts, initial_delay, max_delay
        self.request_timeout, self._sleep = request_timeout, sleep
        self._secrets = secrets_of(token_of(cfg))
        self.rows_written = 0
        self.requests = 0
        self.retries = 0

    def write(self, table: pa.Table) -> int:
        """Upsert the rows of ``table`` that have no error.

        Args:
            table: Columns pk, doc_id, chunk_index, dense (list<float32> or fixed_size_list), text
                (when stored), sparse_indices / sparse_values (when the collection has sparse) and
                the metadata columns; others (``_shard``, ``n_tokens``, ...) are ignored.

        Returns:
            Rows written (rows with an ``error`` excluded).

        Raises:
            KeyError: A needed column is missing.
            ValueError: Bad data (dense dim, null or too long pk); nothing of this batch is written.
            MilvusWriteError: A request failed permanently or after all retries; earlier requests of
                the batch are written (upserts: writing the batch again is safe).
        """
        C.require_columns("milvus writer", table.column_names, R.needed_columns(self.spec))
        if C.ERROR in table.column_names:
            table = table.filter(pc.is_null(table.column(C.ERROR)))
        if table.num_rows == 0:
            return 0
        R.check_keys(table)
        table = last_per_key(table)
        R.dense_matrix(table, self.spec.dense_dim)  # refuse bad vectors before writing any request
        sizes = R.row_bytes(table, self.spec, R.sparse_column(table) if self.spec.has_sparse else None)
        pks = table.column(C.PK)
        for start, end in split_requests(sizes, self.cfg.write_batch_rows, self.cfg.max_request_bytes):
            part = table.slice(start, end - start)  # one request's rows, packed column-wise (columns.py)
            what = f"upsert of {part.num_rows} rows ({pks[start].as_py()!r} .. {pks[end - 1].as_py()!r})"
            self._call(what, lambda p=part: upsert_table(self.client, self.spec, p, timeout=self.request_timeout))
            self.requests += 1
            self.rows_written += part.num_rows
        return table.num_rows

    def delete_keys(self, pks: list[str]) -> None:
        """Delete rows by primary key (keys are hex digests and digits: no user text reaches an expression)."""
        for start in range(0, len(pks), self.cfg.write_batch_rows):
            part = pks[start:start + self.cfg.write_batch_rows]
            self._call(f"delete of {len(part)} rows", lambda p=part: self.client.delete(
                self.spec.name, ids=p, timeout=self.request_timeout))

    def existing_keys(self, pks: list[str]) -> list[str]:
        """Those of ``pks`` that the collection holds."""
        found: list[str] = []
        for start in range(0, len(pks), self.cfg.write_batch_rows):
            part = pks[start:start + self.cfg.write_batch_rows]
            rows = self._call(f"lookup of {len(part)} keys", lambda p=part: self.client.get(
                self.spec.name, ids=p, output_fields=[C.PK], timeout=self.request_timeout))
            found.extend(r[C.PK] for r in rows)  # type: ignore[union-attr]
        return found

    def chunk_tails(self, starts: list[tuple[str, int]]) -> list[str]:
        """Keys of the chunks that exist from each ``(doc_id, first chunk)`` on (a document's chunks are
        numbered without gaps, so the search stops at the first missing one)."""
        found: list[str] = []
        todo = starts
        while todo:
            keys = {C.chunk_pk(d, k): (d, k) for d, k in todo}
            hits = self.existing_keys(list(keys))
            found.extend(hits)
            todo = [(keys[h][0], keys[h][1] + 1) for h in hits]
        return found

    def flush(self) -> None:
        """Seal what was written (call once at the end: index building works on sealed segments)."""
        self._call("flush", lambda: self.client.flush(self.spec.name, timeout=self.request_timeout))

    def _call(self, what: str, fn: Callable[[], object]) -> object:
        started = time.monotonic()
        try:
            return retry(fn, what=f"{what} into '{self.spec.name}'", is_transient=is_transient,
                         attempts=self.attempts or 1, for_s=None if self.attempts else self.cfg.outage_s,
                         base_delay=self.initial_delay, max_delay=self.max_delay,
                         jitter=False, sleep=self._counting_sleep, describe=self._describe, logger=log)
        except Exception as e:  # noqa: BLE001 - classified below
            detail = self._describe(e)
            if not is_transient(e):
                raise MilvusWriteError(f"{what} into '{self.spec.name}' failed: {detail}. This is not "
                                       "transient: check the rows and the collection schema") from e
            spent = time.monotonic() - started
            tried = (f"{self.attempts} attempts over {spent:.0f} s" if self.attempts
                     else f"{spent:.0f} s of retries (milvus.outage_s={self.cfg.outage_s:g})")
            raise MilvusWriteError(f"{what} into '{self.spec.name}' still failed after {tried}: {detail}. "
                                   f"Check that Milvus at {redact(self.cfg.uri, self._secrets)} is up and reachable; "
                                   "the job can be re-run safely (writes are upserts)") from e

    def _describe(self, e: BaseException) -> str:
        return redact(f"{type(e).__name__}: {getattr(e, 'message', None) or e}", self._secrets)

    def _counting_sleep(self, delay: float) -> None:
        self.retries += 1
        self._sleep(delay)
