"""Streaming a parquet shard: only the needed columns, record batch by record batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.settings import SourceConfig
from cluster.source.errors import ShardError, storage_failure
from cluster.source.row_checks import check_id, check_text, join_errors, make_table

#: Read buffer per column chunk: pages are streamed instead of loading whole row groups.
BUFFER_BYTES = 4 * 1024 * 1024
_FIX = "re-export the shard, or set source.format if it is not parquet"


def _flat(error: BaseException) -> str:
    """An error's message on one line (arrow messages span several)."""
    return " ".join(str(error).split()).rstrip(" .")


def _open_parquet(path: str, f: BinaryIO) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f, buffer_size=BUFFER_BYTES, pre_buffer=False)
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        raise storage_failure(path, e) or ShardError(
            path, f"not a readable parquet file (corrupt or truncated?): {_flat(e)}; {_FIX}") from e


def _check_schema(path: str, schema: pa.Schema, cfg: SourceConfig, metadata: list[str]) -> None:
    names = schema.names
    wanted = {cfg.id_column: "source.id_column", cfg.text_column: "source.text_column"}
    missing = [f"{setting} {col!r}" for col, setting in wanted.items() if col not in names]
    missing += [f"source.metadata_columns {col!r}" for col in metadata if col not in names]
    if missing:
        raise ShardError(path, f"column(s) not found: {', '.join(missing)}; the shard has columns {names}; "
                               "fix the settings (names are case-sensitive)")
    nested = [f"{c} ({schema.field(c).type})" for c in metadata if pa.types.is_nested(schema.field(c).type)]
    if nested:
        raise ShardError(path, f"metadata column(s) {nested} are not scalar; only str, int, float, bool "
                               "columns can be copied; remove them from source.metadata_columns")


def read_parquet(path: str, f: BinaryIO, cfg: SourceConfig, metadata: list[str],
                 row_groups: Sequence[int] | None = None) -> Iterator[pa.Table]:
    """Yield output batches of at most ``cfg.read_batch_rows`` rows from an open parquet file.

    Args:
        path: The shard's full path (for ``_shard`` and messages).
        f: The open binary file (seekable).
        cfg: Source settings (column names, batch size).
        metadata: Metadata columns to copy, deduplicated.
        row_groups: Only these row groups, in this order (``_row`` keeps the rows' numbers in the
            file); None reads the whole file. For samplers (``jobs.plan``), never for the job.

    Raises:
        ShardError: Corrupt/truncated file, missing or nested columns, or a read failure.
    """
    pf = _open_parquet(path, f)
    _check_schema(path, pf.schema_arrow, cfg, metadata)
    columns = list(dict.fromkeys([cfg.id_column, cfg.text_column, *metadata]))
    if row_groups is None:
        yield from _stream(path, pf, cfg, metadata, columns, None, 0)
        return
    starts = [0]
    for i in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
    for rg in row_groups:
        yield from _stream(path, pf, cfg, metadata, columns, [rg], starts[rg])


def _stream(path: str, pf: pq.ParquetFile, cfg: SourceConfig, metadata: list[str], columns: list[str],
            row_groups: list[int] | None, row: int) -> Iterator[pa.Table]:
    batches = pf.iter_batches(batch_size=cfg.read_batch_rows, row_groups=row_groups, columns=columns,
                              use_threads=False)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, ValueError, EOFError) as e:
            raise storage_failure(path, e) or ShardError(
                path, f"corrupt data near row {row} (truncated or damaged file?): {_flat(e)}; {_FIX}") from e
        if batch is None:
            return
        yield _table(path, batch, cfg, metadata, row)
        row += batch.num_rows


def _table(path: str, batch: pa.RecordBatch, cfg: SourceConfig, metadata: list[str], first_row: int) -> pa.Table:
    ids: list[str | None] = []
    texts: list[str | None] = []
    errors: list[str | None] = []
    kinds: set[str] = set()
    raw_ids = batch.column(cfg.id_column).to_pylist()
    raw_texts = batch.column(cfg.text_column).to_pylist()
    for raw_id, raw_text in zip(raw_ids, raw_texts, strict=True):
        doc_id, id_error = check_id(raw_id, cfg.id_column, kinds)
        text, text_error = check_text(raw_text)
        error = join_errors(id_error, text_error)
        ids.append(doc_id)
        texts.append(None if error else text)
        errors.append(error)
    meta = {col: batch.column(col) for col in metadata}
    return make_table(ids, texts, meta, path, range(first_row, first_row + batch.num_rows), errors, kinds)
