"""Row-level checks shared by the readers, and the output batch layout.

Every row problem is reported in the ``error`` column (its text set to null); several problems of
one row are joined with ``"; "``. The messages:

* id: ``missing id: no '<col>' field``, ``missing id: '<col>' is null``, ``empty id: '<col>' is empty``,
  ``id is <type>, expected a string or integer``, ``id is a floating-point number (...)``, ``id is a boolean
  (...)``, ``id is not valid UTF-8``;
* text: ``missing text: no '<col>' field``, ``text is null``, ``empty text`` (empty or whitespace
  only), ``text is <type>, expected a string``, ``text is not valid UTF-8``;
* jsonl lines: ``line is not valid UTF-8 (...)``, ``line is not valid JSON (...)``,
  ``line is not a JSON object (got <type>)``, ``line is longer than <n> bytes``;
* metadata (jsonl): ``metadata '<col>' is <type>, expected a scalar (str, int, float, bool)``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from cluster import contract

_SCALARS = (str, int, float, bool)


def _valid_unicode(value: str) -> bool:
    """False when ``value`` holds lone surrogates (possible from JSON ``\\ud800`` escapes)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


ID_KINDS = "id_kinds"  # schema metadata of a reader batch: the kinds of ids it held ("integer", "string")


def check_id(value: Any, column: str, kinds: set[str] | None = None) -> tuple[str | None, str | None]:
    """Convert a raw id to the exact string the job compares and stores.

    Args:
        value: The id as read (str, int, bytes, other scalar), or None.
        column: The id column's name, for messages.
        kinds: When given, ``"integer"`` or ``"string"`` is added for a usable id (so that a shard
            whose ids are of another kind than earlier shards can be reported).

    Returns:
        ``(doc_id, None)`` when usable, ``(None, error)`` otherwise. Strings are kept exactly as
        written (no trimming, no normalization); integers become their decimal form (``7`` ->
        ``"7"``, the reversible rule: the integer is ``int(doc_id)``). Floating-point and boolean
        ids are rejected: ``1.0`` is not an exact id and must never merge with ``1`` or ``"1"``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, f"missing id: '{column}' is null"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "id is not valid UTF-8"
    if isinstance(value, bool):
        return None, f"id is a boolean ({value!r}); write ids as strings or integers"
    if isinstance(value, int):
        if kinds is not None:
            kinds.add("integer")
        return str(value), None
    if isinstance(value, float):
        return None, (f"id is a floating-point number ({value!r}); floats are not exact ids (1.0 would merge with "
                      "1): write ids as strings or integers (e.g. cast the column to int64 or string)")
    if isinstance(value, (dict, list, tuple)):
        return None, f"id is {type(value).__name__}, expected a string or integer"
    if not isinstance(value, str):
        value = str(value)  # Decimal, date, datetime...
    if not value.strip():
        return None, f"empty id: '{column}' is empty"
    if not _valid_unicode(value):
        return None, "id is not valid UTF-8"
    if kinds is not None:
        kinds.add("string")
    return value, None


def check_text(value: Any) -> tuple[str | None, str | None]:
    """Check a raw text value.

    Args:
        value: The text as read, or None.

    Returns:
        ``(text, None)`` when usable, ``(None, error)`` otherwise.
    """
    if value is None:
        return None, "text is null"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "text is not valid UTF-8"
    if not isinstance(value, str):
        return None, f"text is {type(value).__name__}, expected a string"
    if not value.strip():
        return None, "empty text"
    if not _valid_unicode(value):
        return None, "text is not valid UTF-8"
    return value, None


def check_metadata(value: Any, column: str) -> tuple[Any, str | None]:
    """Check a metadata value read from JSON: scalars pass, containers are row errors."""
    if value is None or isinstance(value, _SCALARS):
        if isinstance(value, str) and not _valid_unicode(value):
            return None, f"metadata '{column}' is not valid UTF-8"
        return value, None
    return None, f"metadata '{column}' is {type(value).__name__}, expected a scalar (str, int, float, bool)"


def join_errors(*errors: str | None) -> str | None:
    """The non-null messages joined with ``"; "``, or None when there are none."""
    found = [e for e in errors if e]
    return "; ".join(found) if found else None


class MetadataArrays:
    """Builds metadata arrays from Python values, keeping each column's type stable across batches.

    The first batch with a non-null value fixes a column's type (int64, double, bool, string...);
    later batches are cast to it when that is lossless (all-null batches always are). Values of
    mixed kinds within a batch (e.g. 1 and "a") become strings (JSON text for non-strings).
    """

    def __init__(self) -> None:
        self.types: dict[str, pa.DataType] = {}

    def array(self, column: str, values: Sequence[Any]) -> pa.Array:
        """A pyarrow array of ``values`` for ``column`` (see the class docstring)."""
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arr = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())
        known = self.types.get(column)
        if known is None:
            if arr.type != pa.null():
                self.types[column] = arr.type
            return arr
        if arr.type != known:
            # when the cast is lossy the inferred type stays; writers cast to the collection schema
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                arr = arr.cast(known, safe=True)
        return arr


def make_table(
    doc_ids: Sequence[str | None],
    texts: Sequence[str | None],
    metadata: dict[str, pa.Array],
    shard: str,
    rows: Sequence[int],
    errors: Sequence[str | None],
    id_kinds: set[str] | None = None,
) -> pa.Table:
    """The reader's output batch: doc_id, text, metadata columns, _shard, _row, error.

    Args:
        doc_ids: Document ids (null where unusable).
        texts: Texts (null where the row has an error).
        metadata: Metadata arrays by column name, in the configured order.
        shard: The shard's path, repeated in ``_shard``.
        rows: 0-based row numbers within the shard.
        errors: Null, or what is wrong with the row.
        id_kinds: Kinds of the usable ids (see :func:`check_id`), kept in the schema metadata.
    """
    n = len(rows)
    columns: dict[str, pa.Array] = {
        contract.DOC_ID: pa.array(doc_ids, pa.string()),
        contract.TEXT: pa.array(texts, pa.string()),
    }
    columns.update(metadata)
    columns[contract.SHARD] = pa.array([shard] * n, pa.string())
    columns[contract.ROW] = pa.array(rows, pa.int64())
    columns[contract.ERROR] = pa.array(errors, pa.string())
    table = pa.table(columns)
    if id_kinds:
        table = table.replace_schema_metadata({ID_KINDS: ",".join(sorted(id_kinds))})
    return table
