"""The per-shard manifest: which shards are finished, so re-runs resume and incremental runs skip.

Layout under ``checkpoint.uri`` (local folder or ``s3://``), one folder per job identity (a hash
of the settings that decide the rows: source, model, chunking, target collection, key scheme):

* ``job.json``: the identity, for people;
* ``state.json``: the generation, whether the last run of it finished, the run that may be writing
  (``open_run``: left behind by a run that stopped, so that the next one trusts no fingerprint of
  the id files without the collection's word), the source's id kind;
* ``records/``: one record per shard (path, size, version, counts, the generation that finished
  it, its id file), written only after the shard's rows are written and its rejects are in the
  dead-letter files (bulk import: after its import job completed); the records of one
  checkpoint go into one segment object, compacted into one index object at the end of a run
  (:mod:`cluster.manifest.record_log`; ``shards/<key>.json``, one object per record, is the
  layout before it, still read);
* ``ids/<key>-<run>.parquet``: the shard's document ids and chunk counts, written by the read
  task (see :mod:`cluster.manifest.ids`);
* ``pending/<key>-<run>.parquet``: ids that left a changed shard, deleted by a later
  ``delete_missing`` run unless they turn up elsewhere;
* ``imports/<group>.json``: bulk import groups in flight (files, jobs, shards).

A full run after a finished one starts a new generation instead of deleting records: the
previous records stay as what is known of the collection (the ids and chunk counts of every
shard, vanished ones included) until a newer run replaces them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.manifest.record_log import RecordLog
from cluster.manifest.store import Store
from cluster.source import Shard

if TYPE_CHECKING:
    from jobs.config import JobConfig

log = logging.getLogger(__name__)

LAYOUT = 2  # manifest layout and primary-key scheme (chunk_pk): part of the identity


def job_identity(cfg: JobConfig) -> dict[str, Any]:
    """The settings that decide which rows a shard produces and where they go (no secrets).

    ``mode`` is deliberately absent: an incremental run builds on what a full run recorded. Two
    runs on one target never overlap: the lease (:mod:`cluster.manifest.lease`) refuses the second.
    """
    from cluster.milvus.errors import redact as strip_credentials

    m, s = cfg.model, cfg.source
    return {
        "layout": LAYOUT,
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


def repair_rel(path: str, run_id: str) -> str:
    """Where the id pass puts the ids a shard's version wins (relative to the manifest folder)."""
    return f"repairs/{shard_key(path)}-{run_id}.parquet"


def shard_key(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:24]


class Manifest:
    """Finished shards of one job identity.

    Args:
        store: The checkpoint storage (``checkpoint.uri``).
        identity: :func:`job_identity` of the run.
    """

    def __init__(self, store: Store, identity: dict[str, Any]) -> None:
        self.key = identity_key(identity)
        self.store = store.child(self.key)
        self.uri = self.store.uri
        if not self.store.exists("job.json"):
            self.store.put_json("job.json", identity)
        self.state: dict[str, Any] = self.store.get_json("state.json") or {"generation": 0, "finished": False}
        self.log = RecordLog(self.store)

    @property
    def generation(self) -> int:
        return int(self.state.get("generation", 0))

    def _save_state(self) -> None:
        self.store.put_json("state.json", self.state)

    # ---- shard records ---------------------------------------------------------------------------
    def records(self) -> dict[str, dict[str, Any]]:
        """Every shard record (of any generation), by shard path, read from storage now."""
        return self.log.load()

    def done(self, rec: dict[str, Any] | None) -> bool:
        """The record finished its shard in the current generation."""
        return rec is not None and int(rec.get("generation", -1)) == self.generation

    @staticmethod
    def unchanged(rec: dict[str, Any] | None, shard: Shard) -> bool:
        """True when ``rec`` describes this very file (same size and etag/mtime)."""
        return rec is not None and rec.get("size") == shard.size and rec.get("version") == shard.version

    def ids_rel(self, path: str, run_id: str) -> str:
        return f"ids/{shard_key(path)}-{run_id}.parquet"

    def pending_rel(self, path: str, run_id: str) -> str:
        return f"pending/{shard_key(path)}-{run_id}.parquet"

    def mark_done(self, done: list[tuple[Shard, dict[str, Any], str | None]],
                  fence: Callable[[], None] | None = None) -> None:
        """Record the shards ``[(shard, counts, id file), ...]`` as finished in this generation, in one segment.

        The id files of the records they replace are deleted at the next compaction (:meth:`compact`).
        ``fence`` is called before a compaction deletes anything.
        """
        now = time.time()
        self.log.append([{"path": shard.path, "size": shard.size, "version": shard.version,
                          "generation": self.generation, "ids": ids_rel, "finished_at": now, **counts}
                         for shard, counts, ids_rel in done], fence=fence)

    def forget(self, paths: list[str]) -> None:
        """Drop shards' records (their files left the source and their documents were deleted); their id files
        go at the next compaction."""
        self.log.append([], forget=paths)

    def compact(self, fence: Callable[[], None] | None = None) -> None:
        """Write the records' index and remove the segments, legacy records and id files it makes obsolete."""
        self.log.compact(fence)

    def collect_garbage(self, records: dict[str, dict[str, Any]]) -> int:
        """Delete id files no record refers to (left by runs that stopped before recording); returns how many."""
        used = {r.get("ids") for r in records.values()}
        stale = [n for n in self.store.list("ids", ".parquet") if f"ids/{n}" not in used]
        for name in stale:
            self.store.delete(f"ids/{name}")
        return len(stale)

    # ---- deletes pending -------------------------------------------------------------------------
    def pending(self) -> list[str]:
        """Files (relative) of ids that left a changed shard and wait for a delete_missing run."""
        return [f"pending/{n}" for n in self.store.list("pending", ".parquet")]

    def clear_pending(self, files: list[str]) -> None:
        for rel in files:
            self.store.delete(rel)

    # ---- repairs of ids found in several shards -------------------------------------------------
    def repairs(self) -> dict[str, dict[str, Any]]:
        """Shards whose winning versions of repeated ids must be written again: path -> shard and id file."""
        return dict(self.store.get_json("repairs.json") or {})

    def put_repairs(self, repairs: dict[str, dict[str, Any]]) -> None:
        self.store.put_json("repairs.json", repairs)

    def clear_repairs(self, repairs: dict[str, dict[str, Any]]) -> None:
        self.store.delete("repairs.json")
        for entry in repairs.values():
            self.store.delete(entry["file"])

    # ---- run state -------------------------------------------------------------------------------
    def run_finished(self) -> bool:
        """True when the last run of this identity finished (a full run then starts a new generation)."""
        return bool(self.state.get("finished"))

    def start_generation(self) -> None:
        """A new full run: every shard is to be done again; earlier records stay as the known past."""
        self.state = {**self.state, "generation": self.generation + 1, "finished": False, "started_at": time.time()}
        self._save_state()

    def set_finished(self, summary: dict[str, Any]) -> None:
        self.compact()
        self.state = {**self.state, "finished": True, "finished_at": time.time(), "summary": summary}
        self.state.pop("open_run", None)
        self._save_state()

    def open_run(self, run_id: str) -> str | None:
        """Note that ``run_id`` may write from now on; returns the run noted before it that never finished
        (its writes may be newer than what the id files record), or None."""
        before = self.state.get("open_run")
        self.state = {**self.state, "open_run": run_id}
        self._save_state()
        return before

    def id_kind(self) -> tuple[str, str] | None:
        """``(kind, shard)``: the id column kind the first recorded shard had (string or integer)."""
        kind = self.state.get("id_kind")
        return (kind["kind"], kind["shard"]) if kind else None

    def set_id_kind(self, kind: str, shard: str) -> None:
        self.state = {**self.state, "id_kind": {"kind": kind, "shard": shard}}
        self._save_state()

    # ---- bulk import groups ----------------------------------------------------------------------
    def import_groups(self) -> list[dict[str, Any]]:
        """Import groups recorded and not yet completed (oldest first)."""
        return [self.store.get_json(f"imports/{n}") for n in self.store.list("imports", ".json")]

    def put_import_group(self, group: dict[str, Any]) -> None:
        self.store.put_json(f"imports/{group['name']}.json", group)

    def drop_import_group(self, name: str) -> None:
        self.store.delete(f"imports/{name}.json")
