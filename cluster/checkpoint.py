"""The per-shard manifest: which shards are finished, so re-runs resume and incremental runs skip.

Layout under ``checkpoint.uri``: one folder per job identity (a hash of the settings that
decide the rows: source, model, chunking, target collection), holding ``job.json`` (the
identity, for people) and ``shards/<hash>.json`` per finished shard, written only after the
shard's rows were flushed to Milvus, plus ``shards/<hash>.ids`` (its document ids, for
incremental deletes). One small object per shard works the same on a local disk and on S3,
which has no append.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cluster.source import Shard
from cluster.source.filesystem import filesystem

if TYPE_CHECKING:
    from jobs.config import JobConfig

log = logging.getLogger(__name__)


def job_identity(cfg: JobConfig) -> dict[str, Any]:
    """The settings that decide which rows a shard produces and where they go (no secrets)."""
    from cluster.milvus.errors import redact as strip_credentials

    m, s = cfg.model, cfg.source
    return {
        "source": {"uri": s.uri, "format": s.format, "id_column": s.id_column, "text_column": s.text_column,
                   "metadata_columns": s.metadata_columns},
        "model": {"name": m.name, "dense_dim": m.dense_dim, "sparse": m.sparse, "sparse_top_k": m.sparse_top_k,
                  "passage_prefix": m.passage_prefix, "max_seq_length": m.max_seq_length, "normalize": m.normalize},
        "chunking": {"long_docs": cfg.chunking.long_docs, "chunk_tokens": cfg.chunking.chunk_tokens,
                     "overlap": cfg.chunking.overlap},
        "milvus": {"uri": strip_credentials(cfg.milvus.uri), "db_name": cfg.milvus.db_name,
                   "collection": cfg.milvus.collection, "store_text": cfg.milvus.store_text},
    }


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def shard_key(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:24]


class Manifest:
    """Finished shards of one job identity."""

    def __init__(self, uri: str, storage_options: dict[str, Any], identity: dict[str, Any]) -> None:
        self.fs, root = filesystem(uri, storage_options)
        self.key = identity_key(identity)
        self.root = f"{root.rstrip('/')}/{self.key}"
        self.uri = f"{uri.rstrip('/')}/{self.key}"
        self.fs.makedirs(f"{self.root}/shards", exist_ok=True)
        job = f"{self.root}/job.json"
        if not self.fs.exists(job):
            self._put(job, json.dumps(identity, indent=2, sort_keys=True))

    def _put(self, path: str, text: str) -> None:
        with self.fs.open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every finished shard's record, by shard path."""
        self.fs.invalidate_cache(f"{self.root}/shards")
        out = {}
        for path in self.fs.glob(f"{self.root}/shards/*.json"):
            with self.fs.open(path, "r", encoding="utf-8") as f:
                rec = json.load(f)
            out[rec["path"]] = rec
        return out

    @staticmethod
    def unchanged(rec: dict[str, Any] | None, shard: Shard) -> bool:
        """True when ``rec`` describes this very file (same size and etag/mtime)."""
        return rec is not None and rec.get("size") == shard.size and rec.get("version") == shard.version

    def doc_ids(self, path: str) -> list[str]:
        """The document ids a finished shard held (for incremental deletes)."""
        return self._read_ids(f"{self.root}/shards/{shard_key(path)}.ids")

    def mark_done(self, shard: Shard, counts: dict[str, Any], doc_ids: Iterable[str]) -> None:
        """Record ``shard`` as finished: ids first, then the record (its presence means done)."""
        base = f"{self.root}/shards/{shard_key(shard.path)}"
        self._put(base + ".ids", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in sorted(set(doc_ids))))
        rec = {"path": shard.path, "size": shard.size, "version": shard.version, "finished_at": time.time(), **counts}
        self._put(base + ".json", json.dumps(rec, sort_keys=True))

    def add_pending_deletes(self, path: str, doc_ids: Iterable[str]) -> None:
        """Ids that left a changed shard: kept until a delete_missing run removes them (a crash in
        between must not forget them, since the shard itself is recorded as done)."""
        target = f"{self.root}/pending/{shard_key(path)}.ids"
        ids = set(doc_ids) | set(self._read_ids(target))
        self.fs.makedirs(f"{self.root}/pending", exist_ok=True)
        self._put(target, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in sorted(ids)))

    def pending_deletes(self) -> tuple[list[str], list[str]]:
        """(ids waiting for deletion, the files holding them)."""
        self.fs.invalidate_cache(f"{self.root}/pending")
        files = self.fs.glob(f"{self.root}/pending/*.ids")
        return sorted({d for f in files for d in self._read_ids(f)}), files

    def clear_pending(self, files: list[str]) -> None:
        for f in files:
            self.fs.rm(f)

    def _read_ids(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        with self.fs.open(path, "r", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def forget(self, path: str) -> None:
        """Drop a shard's record (its file was removed from the source)."""
        base = f"{self.root}/shards/{shard_key(path)}"
        for suffix in (".json", ".ids"):
            if self.fs.exists(base + suffix):
                self.fs.rm(base + suffix)

    def run_finished(self) -> bool:
        """True when the last run of this identity finished (a full run then starts over)."""
        return self.fs.exists(f"{self.root}/finished.json")

    def set_finished(self, finished: bool, summary: dict[str, Any] | None = None) -> None:
        path = f"{self.root}/finished.json"
        if finished:
            self._put(path, json.dumps({"finished_at": time.time(), "summary": summary or {}}, sort_keys=True))
        elif self.fs.exists(path):
            self.fs.rm(path)

    def reset(self) -> None:
        """Forget every shard (a new full run)."""
        self.fs.invalidate_cache(f"{self.root}/shards")
        for path in self.fs.glob(f"{self.root}/shards/*"):
            self.fs.rm(path)
        self.set_finished(False)


class AliasHistory:
    """The collections an alias has pointed at, oldest first (``<checkpoint.uri>/aliases/<alias>.json``)."""

    def __init__(self, uri: str, storage_options: dict[str, Any], alias: str) -> None:
        self.fs, root = filesystem(uri, storage_options)
        self.fs.makedirs(f"{root.rstrip('/')}/aliases", exist_ok=True)
        self.path = f"{root.rstrip('/')}/aliases/{alias}.json"

    def load(self) -> list[dict[str, Any]]:
        self.fs.invalidate_cache(self.path)
        if not self.fs.exists(self.path):
            return []
        with self.fs.open(self.path, "r", encoding="utf-8") as f:
            return list(json.load(f))

    def save(self, entries: list[dict[str, Any]]) -> None:
        with self.fs.open(self.path, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=2, sort_keys=True)
