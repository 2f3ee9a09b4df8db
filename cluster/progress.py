"""Counting what the driver receives: per-shard completion, the run summary, progress lines."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cluster import contract as c
from cluster.source import Shard
from cluster.stages.arrow import SHARD_END
from cluster.stages.embed import PADDED_LEN
from cluster.stages.tokenize import N_CHUNKS


@dataclass
class ShardState:
    """What has arrived of one shard; it is done when every document and chunk has."""

    size: int
    doc_ids: list[str] = field(default_factory=list)  # ids seen while the shard is in flight
    docs_total: int | None = None
    docs_seen: int = 0
    chunks_expected: int = 0
    chunks_seen: int = 0
    error: str | None = None

    @property
    def done(self) -> bool:
        """Everything of the shard has arrived (it may still have failed: see ``error``)."""
        return (self.docs_total is not None and self.docs_seen >= self.docs_total
                and self.chunks_seen >= self.chunks_expected)

    @property
    def ok(self) -> bool:
        """Done without a shard-level failure."""
        return self.done and self.error is None


class RunTracker:
    """Turns the stream of embedded batches into counters, shard completions and the summary."""

    def __init__(self, shards: list[Shard]) -> None:
        self.started = time.monotonic()
        self.shards = {s.path: ShardState(size=s.size) for s in shards}
        self.bytes_total = sum(s.size for s in shards) or 1
        self.docs_read = self.docs_failed = self.chunks_embedded = self.chunks_failed = 0
        self.rows_written = self.tokens = self.padded_tokens = self.truncated_docs = 0
        self.shards_failed = self.shards_skipped = self.duplicate_ids = self.docs_deleted = 0
        # Hashes of the ids of finished shards (8 bytes each), as sorted runs merged now and then
        # (one growing array re-sorted per shard would cost quadratic time).
        self._seen_runs: list[np.ndarray] = []
        self.languages: dict[str, dict[str, int]] = {}

    def observe(self, table: pa.Table) -> list[str]:
        """Count one batch from the pipeline; returns the shards it completed."""
        shard = table.column(c.SHARD).to_pylist()
        chunk_index = table.column(c.CHUNK_INDEX).to_numpy(zero_copy_only=False)
        chunk_index = np.where(table.column(c.CHUNK_INDEX).is_null().to_numpy(zero_copy_only=False), -1, chunk_index)
        err = ~table.column(c.ERROR).is_null().to_numpy(zero_copy_only=False)
        end = table.column(SHARD_END).to_pylist()
        n_chunks = table.column(N_CHUNKS).to_numpy(zero_copy_only=False)
        doc_ids = table.column(c.DOC_ID).to_pylist()
        touched = set()
        for i, path in enumerate(shard):
            st = self.shards[path]
            touched.add(path)
            if end[i] is not None:  # end marker (carries the error of a shard that failed)
                st.docs_total = end[i]
                if err[i]:
                    st.error = table.column(c.ERROR)[i].as_py()
                    self.shards_failed += 1
            elif chunk_index[i] < 0:  # a document rejected before chunking
                st.docs_seen += 1
                if doc_ids[i] is not None:
                    st.doc_ids.append(doc_ids[i])
                self.docs_read += 1
                self.docs_failed += 1
            else:
                st.chunks_seen += 1
                if chunk_index[i] == 0:
                    st.docs_seen += 1
                    st.doc_ids.append(doc_ids[i])
                    st.chunks_expected += int(n_chunks[i])
                    self.docs_read += 1
                if err[i]:
                    self.chunks_failed += 1
        is_chunk = (chunk_index >= 0)
        ok = is_chunk & ~err
        self._count_languages(table, ok, chunk_index)
        self.chunks_embedded += int(ok.sum())
        self.tokens += int(table.column(c.N_TOKENS).to_numpy(zero_copy_only=False)[ok].sum())
        self.padded_tokens += int(table.column(PADDED_LEN).to_numpy(zero_copy_only=False)[ok].sum())
        truncated = table.column(c.TRUNCATED).to_numpy(zero_copy_only=False)
        self.truncated_docs += int((truncated & (chunk_index == 0)).sum())
        return [p for p in touched if self.shards[p].done]

    def _count_languages(self, table: pa.Table, ok: np.ndarray, chunk_index: np.ndarray) -> None:
        """Documents, characters, tokens, chunks and full-window chunks per language."""
        langs = table.column(c.LANG).to_pylist()
        chars = table.column(c.DOC_CHARS).to_numpy(zero_copy_only=False)
        tokens = table.column(c.N_TOKENS).to_numpy(zero_copy_only=False)
        at_limit = table.column(c.AT_LIMIT).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(ok):
            stats = self.languages.setdefault(langs[i] or "unknown",
                                              {"docs": 0, "chars": 0, "tokens": 0, "chunks": 0, "chunks_at_limit": 0})
            if chunk_index[i] == 0:
                stats["docs"] += 1
                stats["chars"] += int(chars[i])
            stats["tokens"] += int(tokens[i])
            stats["chunks"] += 1
            stats["chunks_at_limit"] += int(at_limit[i])

    def language_summary(self) -> dict[str, dict[str, float]]:
        """Per language: counts, tokens per character (tokenizer cost), share of chunks at the length limit."""
        out = {}
        for lang, s in sorted(self.languages.items()):
            out[lang] = {**s, "tokens_per_char": round(s["tokens"] / s["chars"], 4) if s["chars"] else 0.0,
                         "chunks_at_limit_share": round(s["chunks_at_limit"] / s["chunks"], 4) if s["chunks"] else 0.0}
        return out

    def finish_shard(self, path: str) -> list[str]:
        """Count duplicate ids of a finished shard (inside it and against earlier shards); returns its ids."""
        st = self.shards[path]
        ids = st.doc_ids
        unique = set(ids)
        self.duplicate_ids += len(ids) - len(unique)
        hashes = np.fromiter((_id_hash(d) for d in unique), dtype=np.uint64, count=len(unique))
        self.duplicate_ids += int(self._seen_mask(hashes).sum())
        self._seen_runs.append(np.sort(hashes))
        if len(self._seen_runs) > 32:
            self._seen_runs = [np.unique(np.concatenate(self._seen_runs))]
        st.doc_ids = []
        return ids

    def already_seen(self, ids: list[str]) -> list[str]:
        """Those of ``ids`` that a shard finished in this run holds."""
        hashes = np.fromiter((_id_hash(d) for d in ids), dtype=np.uint64, count=len(ids))
        return [d for d, hit in zip(ids, self._seen_mask(hashes)) if hit]

    def _seen_mask(self, hashes: np.ndarray) -> np.ndarray:
        seen = np.zeros(len(hashes), dtype=bool)
        for run in self._seen_runs:
            seen |= np.isin(hashes, run)
        return seen

    def shards_done(self) -> int:
        """Shards finished without a shard-level failure."""
        return sum(1 for s in self.shards.values() if s.ok)

    def progress_line(self) -> str:
        """Documents and shards done, rate and ETA (by bytes of finished shards)."""
        elapsed = time.monotonic() - self.started
        done_bytes = sum(s.size for s in self.shards.values() if s.done)
        rate = self.docs_read / elapsed if elapsed > 0 else 0.0
        eta = "?"
        if 0 < done_bytes < self.bytes_total:
            eta = f"{elapsed * (self.bytes_total - done_bytes) / done_bytes:.0f}s"
        elif done_bytes >= self.bytes_total:
            eta = "0s"
        return (f"progress: {self.docs_read} docs ({self.docs_failed} failed), {self.chunks_embedded} chunks, "
                f"{self.shards_done()}/{len(self.shards)} shards, {rate:.1f} docs/s, "
                f"{self.tokens / elapsed if elapsed > 0 else 0:.0f} tokens/s, ETA {eta}")

    def summary(self) -> dict[str, object]:
        """The run summary promised in the README."""
        elapsed = time.monotonic() - self.started
        return {
            "docs_read": self.docs_read,
            "chunks_embedded": self.chunks_embedded,
            "rows_written": self.rows_written,
            "docs_failed": self.docs_failed,
            "chunks_failed": self.chunks_failed,
            "shards": len(self.shards),
            "shards_done": self.shards_done(),
            "shards_failed": self.shards_failed,
            "shards_skipped": self.shards_skipped,
            "docs_truncated": self.truncated_docs,
            "duplicate_ids": self.duplicate_ids,
            "docs_deleted": self.docs_deleted,
            "tokens": self.tokens,
            "elapsed_s": round(elapsed, 3),
            "docs_per_s": round(self.docs_read / elapsed, 3) if elapsed > 0 else 0.0,
            "tokens_per_s": round(self.tokens / elapsed, 1) if elapsed > 0 else 0.0,
            "padding_efficiency": round(self.tokens / self.padded_tokens, 4) if self.padded_tokens else 1.0,
            "languages": self.language_summary(),
        }


def _id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
