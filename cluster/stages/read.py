"""Stage 1 (CPU tasks): read shards as a stream of record batches, then an end marker per shard."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow as pa

from cluster import contract as c
from cluster.settings import SourceConfig
from cluster.source import Shard, ShardError, read_shard
from cluster.stages.arrow import SHARD_END

log = logging.getLogger(__name__)


def shard_rows(shards: list[Shard]) -> list[dict[str, object]]:
    """The items of the dataset the read stage starts from: one per shard."""
    return [{"path": s.path, "format": s.format, "size": s.size, "version": s.version} for s in shards]


def read_shards(batch: pa.Table, *, source: SourceConfig) -> Iterator[pa.Table]:
    """Yield every record batch of each shard in ``batch``, then a marker row with the shard's row count.

    A shard that cannot be read (corrupt, truncated, missing columns) ends with a marker row
    that also carries the error, so the driver counts and reports it; nothing is dropped.
    """
    for item in batch.to_pylist():
        shard = Shard(path=item["path"], format=item["format"], size=item["size"], version=item["version"])
        rows, schema, error = 0, None, None
        try:
            for table in read_shard(shard, source):
                schema = table.schema
                rows += table.num_rows
                yield table.append_column(SHARD_END, pa.nulls(table.num_rows, pa.int64()))
        except ShardError as e:
            log.warning("%s", e)
            error = str(e)
        yield end_marker(shard.path, rows, error, schema, source)


def end_marker(path: str, rows: int, error: str | None, schema: pa.Schema | None, source: SourceConfig) -> pa.Table:
    """One row saying: shard ``path`` held ``rows`` rows (and failed with ``error``, if set)."""
    columns: dict[str, pa.Array] = {
        c.DOC_ID: pa.nulls(1, pa.string()),
        c.TEXT: pa.nulls(1, pa.string()),
    }
    for name in source.metadata_columns:
        tp = schema.field(name).type if schema is not None and name in schema.names else pa.null()
        columns[name] = pa.nulls(1, tp)
    columns[c.SHARD] = pa.array([path], pa.string())
    columns[c.ROW] = pa.array([-1], pa.int64())
    columns[c.ERROR] = pa.array([error], pa.string())
    columns[SHARD_END] = pa.array([rows], pa.int64())
    return pa.table(columns)
