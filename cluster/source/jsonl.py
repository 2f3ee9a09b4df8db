"""Streaming a JSON-lines shard (plain or gzip) line by line, with bounded memory."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa

from cluster.settings import SourceConfig
from cluster.source.errors import ShardError, storage_failure
from cluster.source.row_checks import MetadataArrays, check_id, check_metadata, check_text, join_errors, make_table

#: Longest line read; a longer one becomes a row error and is skipped without being held in memory.
MAX_LINE_BYTES = 64 * 1024 * 1024
#: The id/text fields are looked for in this many first JSON objects before rows are released...
PROBE_OBJECTS = 100
#: ...or in the objects of this many first lines, whichever comes first (bounds the rows held back).
PROBE_LINES = 10_000
READ_BUFFER = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


class _Batch:
    """Rows of the batch being filled."""

    def __init__(self, metadata: list[str]) -> None:
        self.ids: list[str | None] = []
        self.texts: list[str | None] = []
        self.errors: list[str | None] = []
        self.rows: list[int] = []
        self.kinds: set[str] = set()
        self.meta: dict[str, list[Any]] = {c: [] for c in metadata}

    def add(self, row: int, doc_id: str | None, text: str | None, error: str | None, meta: dict[str, Any]) -> None:
        self.rows.append(row)
        self.ids.append(doc_id)
        self.texts.append(None if error else text)
        self.errors.append(error)
        for col, values in self.meta.items():
            values.append(meta.get(col))

    def table(self, path: str, typer: MetadataArrays) -> pa.Table:
        meta = {col: typer.array(col, values) for col, values in self.meta.items()}
        return make_table(self.ids, self.texts, meta, path, self.rows, self.errors, self.kinds)


def _parse(line: bytes, cfg: SourceConfig, metadata: list[str],
           kinds: set[str]) -> tuple[str | None, str | None, str | None, dict[str, Any], dict[str, Any] | None]:
    """One non-blank line -> (doc_id, text, error, metadata values, the object or None)."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, None, f"line is not valid UTF-8 (byte {e.start}: {e.reason})", {}, None
    try:
        obj = json.loads(decoded)
    except ValueError as e:
        msg = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        return None, None, f"line is not valid JSON ({msg})", {}, None
    if not isinstance(obj, dict):
        return None, None, f"line is not a JSON object (got {type(obj).__name__})", {}, None
    if cfg.id_column in obj:
        doc_id, id_error = check_id(obj[cfg.id_column], cfg.id_column, kinds)
    else:
        doc_id, id_error = None, f"missing id: no '{cfg.id_column}' field"
    if cfg.text_column in obj:
        text, text_error = check_text(obj[cfg.text_column])
    else:
        text, text_error = None, f"missing text: no '{cfg.text_column}' field"
    meta: dict[str, Any] = {}
    meta_errors: list[str | None] = []
    for col in metadata:
        meta[col], err = check_metadata(obj.get(col), col)
        meta_errors.append(err)
    return doc_id, text, join_errors(id_error, text_error, *meta_errors), meta, obj


def _open_stream(path: str, fmt: str, f: BinaryIO) -> io.BufferedIOBase:
    buffered = io.BufferedReader(f, buffer_size=READ_BUFFER)  # type: ignore[arg-type]
    try:
        head = buffered.peek(2)[:2]
    except Exception as e:
        raise storage_failure(path, e) or ShardError(path, f"read failed: {type(e).__name__}: {e}") from e
    if fmt == "jsonl.gz":
        if head != GZIP_MAGIC:
            raise ShardError(path, "not gzip data (no gzip header); if it is plain JSON lines, name it .jsonl "
                                   "or set source.format: jsonl")
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if head == GZIP_MAGIC:
        raise ShardError(path, "the file is gzip-compressed but read as plain jsonl; name it .jsonl.gz "
                               "with source.format auto, or set source.format: jsonl.gz")
    return buffered


def _read_line(path: str, fmt: str, stream: io.BufferedIOBase, limit: int) -> bytes:
    try:
        return stream.readline(limit)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ShardError(path, f"unreadable gzip data (corrupt or truncated?): {e}; "
                               "re-compress or re-upload the shard") from e
    except OSError as e:
        failure = storage_failure(path, e)
        if failure is not None:
            raise failure from e
        if fmt == "jsonl.gz":
            raise ShardError(path, f"unreadable gzip data (corrupt or truncated?): {e}; "
                                   "re-compress or re-upload the shard") from e
        raise ShardError(path, f"read failed: {type(e).__name__}: {e}") from e


def read_jsonl(path: str, fmt: str, f: BinaryIO, cfg: SourceConfig, metadata: list[str]) -> Iterator[pa.Table]:
    """Yield output batches of at most ``cfg.read_batch_rows`` rows from an open JSON-lines file.

    ``_row`` is the 0-based line number; blank lines are skipped (so ``_row`` may have gaps).
    Until :data:`PROBE_OBJECTS` objects (or :data:`PROBE_LINES` lines) were read, rows are held
    back: when none of those objects has the id (or text) field, the shard fails as a whole
    instead of yielding one error per row (a misspelled column name in the settings).

    Args:
        path: The shard's full path (for ``_shard`` and messages).
        fmt: ``jsonl`` or ``jsonl.gz``.
        f: The open binary file.
        cfg: Source settings (column names, batch size).
        metadata: Metadata columns to copy, deduplicated.

    Raises:
        ShardError: Missing id/text field, gzip mismatch, corrupt gzip, or a read failure.
    """
    stream = _open_stream(path, fmt, f)
    typer = MetadataArrays()
    batch = _Batch(metadata)
    held: list[pa.Table] | None = []  # None once the probe passed
    keys: set[str] = set()
    has_id = has_text = False
    objects = 0
    line_no = -1
    limit = MAX_LINE_BYTES
    while True:
        line = _read_line(path, fmt, stream, limit + 1)
        if not line:
            break
        line_no += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := _read_line(path, fmt, stream, READ_BUFFER)) and not rest.endswith(b"\n"):
                pass
            batch.add(line_no, None, None, f"line is longer than {limit} bytes", {})
        else:
            if line_no == 0 and line.startswith(_BOM):
                line = line[len(_BOM):]
            if not line.strip():
                continue
            doc_id, text, error, meta, obj = _parse(line, cfg, metadata, batch.kinds)
            batch.add(line_no, doc_id, text, error, meta)
            if held is not None and obj is not None:
                objects += 1
                has_id = has_id or cfg.id_column in obj
                has_text = has_text or cfg.text_column in obj
                if len(keys) < 1000:
                    keys.update(obj)
        if len(batch.rows) >= cfg.read_batch_rows:
            table = batch.table(path, typer)
            batch = _Batch(metadata)
            if held is None:
                yield table
                continue
            held.append(table)
        if held is not None and (objects >= PROBE_OBJECTS or line_no + 1 >= PROBE_LINES):
            _probe(path, cfg, objects, keys, has_id, has_text)
            yield from held
            held = None
    if held is not None:
        _probe(path, cfg, objects, keys, has_id, has_text)
        yield from held
    if batch.rows:
        yield batch.table(path, typer)


def _probe(path: str, cfg: SourceConfig, objects: int, keys: set[str], has_id: bool, has_text: bool) -> None:
    if objects == 0 or (has_id and has_text):
        return
    missing = [f"source.{name} {col!r}" for name, col, ok in
               (("id_column", cfg.id_column, has_id), ("text_column", cfg.text_column, has_text)) if not ok]
    shown = sorted(keys)[:30]
    raise ShardError(path, f"field(s) not found in any of the first {objects} JSON objects: {', '.join(missing)}; "
                           f"the objects have fields {shown}; fix the settings (names are case-sensitive)")
