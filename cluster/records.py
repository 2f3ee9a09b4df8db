"""What a writer tells the driver about a block: per-shard counts, never rows.

:func:`block_record` runs in the writer, vectorized over the block; the driver merges the
records into one :class:`ShardCounts` per shard (:mod:`cluster.progress`). A record is a small
dict: its size grows with the shards and languages in the block, not with its rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c

SAMPLE_REJECTS = 3  # reasons of rejected rows a record carries as examples for the driver's log
COUNTERS = ("docs_seen", "docs_failed", "chunks_seen", "chunks_expected", "chunks_ok", "chunks_failed", "tokens",
            "padded_tokens", "truncated")


def _np(table: pa.Table, name: str, fill: Any = 0) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        col = pc.fill_null(col, fill)
    return col.to_numpy()


def block_record(table: pa.Table) -> dict[str, Any]:
    """Per-shard counts, per-language statistics and a few reject examples of an embedded block."""
    n = table.num_rows
    shard_col = table.column(c.SHARD).combine_chunks()
    shards = pc.unique(shard_col)
    code = pc.index_in(shard_col, value_set=shards).to_numpy()
    err = pc.is_valid(table.column(c.ERROR)).to_numpy(zero_copy_only=False)
    marker = pc.is_valid(table.column(c.SHARD_END)).to_numpy(zero_copy_only=False)
    chunk_index = _np(table, c.CHUNK_INDEX, -1)
    chunk = chunk_index >= 0
    first = chunk_index == 0
    ok = chunk & ~err
    rejected = ~marker & ~chunk  # a document rejected before chunking
    per: dict[str, np.ndarray] = {
        "docs_seen": first | rejected,
        "docs_failed": rejected,
        "chunks_seen": chunk,
        "chunks_expected": np.where(first, _np(table, c.N_CHUNKS), 0),
        "chunks_ok": ok,
        "chunks_failed": chunk & err,
        "tokens": np.where(ok, _np(table, c.N_TOKENS), 0),
        "padded_tokens": np.where(ok, _np(table, c.PADDED_LEN), 0) if c.PADDED_LEN in table.column_names
        else np.zeros(n, np.int64),
        "truncated": first & _np(table, c.TRUNCATED, False).astype(bool),
    }
    sums = {k: np.bincount(code, weights=v.astype(np.int64), minlength=len(shards)).astype(np.int64)
            for k, v in per.items()}
    out: dict[str, dict[str, Any]] = {}
    names = shards.to_pylist()
    for i, path in enumerate(names):
        out[path] = {k: int(sums[k][i]) for k in COUNTERS}
    for i in np.flatnonzero(marker):
        end = out[names[code[i]]]
        end["docs_total"] = int(table.column(c.SHARD_END)[int(i)].as_py())
        end["error"] = table.column(c.ERROR)[int(i)].as_py()
        info = table.column(c.SHARD_INFO)[int(i)].as_py() if c.SHARD_INFO in table.column_names else None
        end["info"] = json.loads(info) if info else {}
    bad = np.flatnonzero(err)  # rejected documents and chunks, and the markers of shards that failed
    samples = table.select([c.SHARD, c.ROW, c.DOC_ID, c.ERROR]).take(pa.array(bad[:SAMPLE_REJECTS])).to_pylist()
    fp32 = int(pc.sum(table.column(c.FP32_RERUNS)).as_py() or 0) if c.FP32_RERUNS in table.column_names else 0
    return {"shards": out, "languages": language_stats(table, ok, first), "rejects": int(err.sum()),
            "reject_samples": samples, "fp32_reruns": fp32}


def language_stats(table: pa.Table, ok: np.ndarray, first: np.ndarray) -> dict[str, dict[str, int]]:
    """Documents, characters, tokens, chunks and full-window chunks per language, over embedded chunks."""
    if not ok.any():
        return {}
    langs = pc.fill_null(table.column(c.LANG), "unknown").combine_chunks().filter(pa.array(ok))
    values = pc.unique(langs)
    code = pc.index_in(langs, value_set=values).to_numpy()
    k = len(values)
    firsts = first[ok]
    cols = {"docs": firsts, "chars": np.where(firsts, _np(table, c.DOC_CHARS)[ok], 0),
            "tokens": _np(table, c.N_TOKENS)[ok], "chunks": np.ones(int(ok.sum()), np.int64),
            "chunks_at_limit": _np(table, c.AT_LIMIT, False)[ok].astype(np.int64)}
    sums = {name: np.bincount(code, weights=v.astype(np.int64), minlength=k).astype(np.int64)
            for name, v in cols.items()}
    return {lang: {name: int(sums[name][i]) for name in cols} for i, lang in enumerate(values.to_pylist())}


@dataclass
class ShardCounts:
    """What has arrived of one shard; it is done when every document and chunk has."""

    size: int
    docs_total: int | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rows_written: int = 0
    lost: bool = False  # some of its rows went with a writer that died: it cannot complete in this run
    docs_seen: int = 0
    docs_failed: int = 0
    chunks_seen: int = 0
    chunks_expected: int = 0
    chunks_ok: int = 0
    chunks_failed: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0

    def add(self, rec: dict[str, Any]) -> None:
        for key in COUNTERS:
            setattr(self, key, getattr(self, key) + rec.get(key, 0))
        self.rows_written += rec.get("rows_written", 0)
        if "docs_total" in rec:
            self.docs_total, self.error, self.info = rec["docs_total"], rec["error"], rec.get("info") or {}

    @property
    def done(self) -> bool:
        """Everything of the shard has arrived (it may still have failed: see ``error``)."""
        return (self.docs_total is not None and self.docs_seen + self.unchanged >= self.docs_total
                and self.chunks_seen >= self.chunks_expected)

    @property
    def unchanged(self) -> int:
        """Documents the read task skipped: their rows already held this version."""
        return int(self.info.get("unchanged", 0))

    @property
    def ok(self) -> bool:
        """Done without a shard-level failure."""
        return self.done and self.error is None and not self.lost

    def manifest_counts(self) -> dict[str, Any]:
        """What the shard's manifest record keeps of it."""
        return {"docs": self.docs_total, "chunks": self.chunks_ok + int(self.info.get("chunks_unchanged", 0)),
                "docs_unchanged": self.unchanged, "chunks_failed": self.chunks_failed,
                "docs_failed": self.docs_failed, "docs_unique": self.info.get("docs_unique"),
                "duplicates": self.info.get("duplicates", 0)}
