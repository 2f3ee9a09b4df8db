"""Reading one shard as a stream of output batches (see :mod:`cluster.contract`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

import pyarrow as pa

from cluster import contract
from cluster.settings import SourceConfig
from cluster.source.errors import ShardError, storage_failure
from cluster.source.jsonl import read_jsonl
from cluster.source.listing import Shard
from cluster.source.parquet import read_parquet
from cluster.source.storage_retry import retry
from embedder.storage import filesystem

_OUTPUT_ONLY = (contract.SHARD, contract.ROW, contract.ERROR)


def _metadata_columns(cfg: SourceConfig) -> list[str]:
    if cfg.read_batch_rows < 1:
        raise ValueError(f"source.read_batch_rows must be >= 1, got {cfg.read_batch_rows}")
    clash = [c for c in cfg.metadata_columns if c in _OUTPUT_ONLY]
    if clash:
        raise ValueError(f"source.metadata_columns: {clash} clash with the reader's own columns "
                         f"{list(_OUTPUT_ONLY)}; rename them")
    return list(dict.fromkeys(cfg.metadata_columns))


def open_shard(shard: Shard, cfg: SourceConfig) -> BinaryIO:
    """Open a shard for binary reading, retrying transient storage errors.

    Args:
        shard: The shard to open.
        cfg: Source settings (``storage_options``).

    Returns:
        A seekable binary file object; the caller closes it.

    Raises:
        ShardError: The file is gone, access is denied, or opening keeps failing.
    """
    fs, path = filesystem(shard.path, cfg.storage_options)

    def attempt() -> BinaryIO:
        fs.invalidate_cache(path)  # the size must be the object's now, not the one listed earlier
        return fs.open(path, "rb")

    try:
        return retry(attempt, what=f"opening {shard.path}")
    except Exception as e:
        raise storage_failure(shard.path, e) or ShardError(shard.path, f"cannot open: {type(e).__name__}: {e}") from e


def _size(f: BinaryIO) -> int | None:
    size = getattr(f, "size", None)
    if isinstance(size, int):
        return size
    try:
        pos = f.tell()
        end = f.seek(0, 2)
        f.seek(pos)
        return int(end)
    except (OSError, ValueError):
        return None


def read_shard(shard: Shard, cfg: SourceConfig, *, row_groups: Sequence[int] | None = None) -> Iterator[pa.Table]:
    """Stream a shard as batches of at most ``cfg.read_batch_rows`` rows.

    Each batch has the columns ``doc_id`` (string), ``text`` (string, null on error), the
    ``cfg.metadata_columns`` (types kept), ``_shard`` (the shard path), ``_row`` (int64, 0-based
    row number; for jsonl the line number) and ``error`` (null when the row is fine). Row
    problems never stop the shard (see :mod:`cluster.source.row_checks` for the messages). Only the
    needed parquet columns are read; jsonl is read line by line; the whole shard is never held
    in memory. A shard yields no batch when it has no rows.

    Args:
        shard: A shard from :func:`cluster.source.listing.list_shards`.
        cfg: Source settings.
        row_groups: parquet only: read just these row groups, in this order (a sampler's spread
            read, ``jobs.plan``); ``_row`` stays the row's number in the file. Ignored for jsonl.

    Yields:
        ``pyarrow.Table`` batches, in row order.

    Raises:
        ShardError: The shard as a whole cannot be read (may come after some batches were
            yielded, e.g. a gzip stream truncated in the middle).
        ValueError: Invalid settings (``read_batch_rows`` < 1, metadata named like an output column).
    """
    metadata = _metadata_columns(cfg)
    if shard.format not in ("parquet", "jsonl", "jsonl.gz"):
        raise ShardError(shard.path, f"unknown format {shard.format!r}; use parquet, jsonl or jsonl.gz")
    with open_shard(shard, cfg) as f:
        if _size(f) == 0:
            raise ShardError(shard.path, "empty file (0 bytes); remove it or re-export the shard")
        if shard.format == "parquet":
            yield from read_parquet(shard.path, f, cfg, metadata, row_groups)
        else:
            yield from read_jsonl(shard.path, shard.format, f, cfg, metadata)
