"""Shard records as an append-only log: one segment object per checkpoint, compacted into one index object.

Layout under the manifest folder:

* ``records/seg-<seq>-<writer>.json``: the records (and ``{"path": ..., "forget": true}``
  tombstones) of one checkpoint, a JSON list; ``seq`` grows by one per segment, ``writer`` is the
  writing process's token (two writers never overwrite each other's segment);
* ``records/index-<seq>.parquet``: every live record after applying all segments up to ``seq``
  (columns ``path`` and ``rec``, the record as JSON); segments up to ``seq`` are obsolete;
* ``shards/<key>.json``: one object per record, the layout before segments; read only while no
  index exists, removed by the first compaction.

What is durable when: a record is in the manifest once its segment's PUT returned (one atomic
object). A compaction writes the new index first and only then deletes the segments, older
indexes and legacy records it covers, then the id files that records it holds replaced or forgot
(nothing refers to them any more): a process that dies in between leaves objects the next load
ignores (segments at or below the newest index's ``seq``) and the next compaction removes. The
log assumes one writer at a time, the lease holder (:mod:`cluster.manifest.lease`).

Costs, for ``N`` shards and ``S`` segments since the last index: loading is one LIST of
``records/`` plus one GET of the index and ``S`` GETs (concurrent on S3); appending is one PUT
per checkpoint, never one per shard; a compaction (at the end of a run, and after
:data:`COMPACT_EVERY` segments) writes ``N`` records once.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.manifest.store import ManifestCorrupt

if TYPE_CHECKING:
    from cluster.manifest.store import Store

log = logging.getLogger(__name__)

FOLDER = "records"
LEGACY = "shards"
COMPACT_EVERY = 256  # segments since the index after which an append compacts
PARALLEL = 16  # concurrent GETs and DELETEs


def _seq(name: str) -> int:
    return int(name.split("-")[1].split(".")[0])


class RecordLog:
    """The shard records of one manifest folder (``store``); thread-safe; one writer at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writer = uuid.uuid4().hex[:12]
        self.segments = 0  # segments since the index
        self._lock = threading.RLock()
        self._view: dict[str, dict[str, Any]] | None = None
        self._seq = 0  # the highest seq of the index and segments seen or written
        self._covered: list[str] = []  # objects (relative) the next index makes obsolete
        self._garbage: set[str] = set()  # id files of replaced or forgotten records
        self._index: str | None = None  # the index this process wrote last

    # ---- reading ---------------------------------------------------------------------------------
    def load(self) -> dict[str, dict[str, Any]]:
        """Every live record, by shard path (a copy; read from storage now)."""
        with self._lock:
            for _ in range(5):  # a compaction by a concurrent reader's writer may remove what was listed
                loaded = self._read()
                if loaded is not None:
                    self._view, self._seq, self._covered, self.segments, self._index = loaded
                    return dict(self._view)
            raise ManifestCorrupt(f"the shard records under {self.store.uri_of(FOLDER)} keep changing while they are "
                                  "read; is another run writing them?")

    def view(self) -> dict[str, dict[str, Any]]:
        """The records as this process knows them (loaded once, then kept up to date by its appends)."""
        with self._lock:
            if self._view is None:
                self.load()
            assert self._view is not None
            return self._view

    def _read(self) -> tuple[dict[str, dict[str, Any]], int, list[str], int, str | None] | None:
        names = self.store.list(FOLDER)
        indexes = sorted((n for n in names if n.startswith("index-") and n.endswith(".parquet")), key=_seq)
        segs = sorted((n for n in names if n.startswith("seg-") and n.endswith(".json")),
                      key=lambda n: (_seq(n), n))
        base = _seq(indexes[-1]) if indexes else -1
        covered = [f"{FOLDER}/{n}" for n in indexes[:-1]] + [f"{FOLDER}/{n}" for n in segs if _seq(n) <= base]
        newer = [n for n in segs if _seq(n) > base]
        if indexes:
            data = self.store.get_bytes(f"{FOLDER}/{indexes[-1]}")
            if data is None:
                return None  # replaced by a newer index since the listing
            view = self._parse_index(f"{FOLDER}/{indexes[-1]}", data)
            covered += [f"{LEGACY}/{n}" for n in self.store.list(LEGACY, ".json")]
        else:
            legacy = [f"{LEGACY}/{n}" for n in self.store.list(LEGACY, ".json")]
            view = {}
            for rel, rec in self._get_all(legacy, allow_missing=True):
                view[self._check(rel, rec)["path"]] = rec
            covered += legacy
        for rel, body in self._get_all([f"{FOLDER}/{n}" for n in newer], allow_missing=False):
            if body is None:
                return None  # compacted away since the listing: read again
            if not isinstance(body, list):
                raise self._corrupt(rel, "is not a list of shard records")
            for rec in body:
                self._check(rel, rec)
                if rec.get("forget"):
                    view.pop(rec["path"], None)
                else:
                    view[rec["path"]] = rec
        covered += [f"{FOLDER}/{n}" for n in newer]
        top = max([base] + [_seq(n) for n in segs])
        return view, max(top, 0), covered, len(newer), f"{FOLDER}/{indexes[-1]}" if indexes else None

    def _get_all(self, rels: list[str], *, allow_missing: bool) -> Iterable[tuple[str, Any]]:
        """``(rel, parsed JSON or None when gone)`` in order; GETs in parallel (bounded)."""
        if not rels:
            return []
        paths = [self.store.path(r) for r in rels]
        if self.store.local:
            blobs = {}
            for p in paths:
                try:
                    with open(p, "rb") as f:
                        blobs[p] = f.read()
                except FileNotFoundError:
                    pass
        else:
            blobs = self.store.fs.cat(paths, on_error="omit", batch_size=PARALLEL)
        out = []
        for rel, path in zip(rels, paths):
            if path in blobs:
                out.append((rel, self.store._parse(rel, blobs[path])))
            elif not allow_missing:
                out.append((rel, None))
        return out

    def _parse_index(self, rel: str, data: bytes) -> dict[str, dict[str, Any]]:
        try:
            table = pq.read_table(io.BytesIO(data), columns=["path", "rec"])
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise self._corrupt(rel, f"is not a readable parquet index ({e})") from e
        try:
            recs = [json.loads(r) for r in table.column("rec").to_pylist()]
        except json.JSONDecodeError as e:
            raise self._corrupt(rel, f"holds a record that is not valid JSON ({e})") from e
        return {self._check(rel, r)["path"]: r for r in recs}

    def _check(self, rel: str, rec: Any) -> dict[str, Any]:
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            raise self._corrupt(rel, "holds something that is not a shard record")
        return rec

    def _corrupt(self, rel: str, what: str) -> ManifestCorrupt:
        return ManifestCorrupt(f"manifest object {self.store.uri_of(rel)} {what}; it was damaged outside the job. "
                               f"Delete it (the shards it records are embedded again; upserts keep rows unique) or "
                               f"the whole folder {self.store.uri} to start over")

    # ---- writing ---------------------------------------------------------------------------------
    def append(self, records: list[dict[str, Any]], forget: Iterable[str] = (),
               fence: Callable[[], None] | None = None) -> None:
        """Write one segment with ``records`` (each with its ``path``) and tombstones for the paths in ``forget``;
        durable when this returns. Compacts after :data:`COMPACT_EVERY` segments (``fence`` is called before a
        compaction deletes anything)."""
        forget = list(forget)
        if not records and not forget:
            return
        with self._lock:
            view = self.view()
            self._seq += 1
            rel = f"{FOLDER}/seg-{self._seq:012d}-{self.writer}.json"
            self.store.put_json(rel, records + [{"path": p, "forget": True} for p in forget])
            for rec in records:
                old = view.get(rec["path"])
                if old and old.get("ids") and old["ids"] != rec.get("ids"):
                    self._garbage.add(old["ids"])
                view[rec["path"]] = rec
            for path in forget:
                old = view.pop(path, None)
                if old and old.get("ids"):
                    self._garbage.add(old["ids"])
            self._covered.append(rel)
            self.segments += 1
            if self.segments >= COMPACT_EVERY:
                self.compact(fence)

    def compact(self, fence: Callable[[], None] | None = None) -> bool:
        """Write the index of every live record, then delete what it makes obsolete; False when nothing to do."""
        with self._lock:
            view = self.view()
            if not self._covered and not self._garbage:
                return False
            paths = sorted(view)
            table = pa.table({"path": pa.array(paths, pa.string()),
                              "rec": pa.array([json.dumps(view[p], sort_keys=True) for p in paths], pa.string())})
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            index = f"{FOLDER}/index-{self._seq:012d}.parquet"
            self.store.put_bytes(index, buf.getvalue())  # durable: from here on the covered objects are obsolete
            if fence is not None:
                fence()
            old_index = [self._index] if self._index not in (None, index) else []
            live_ids = {r.get("ids") for r in view.values()}
            obsolete = [r for r in self._covered + old_index if r != index] + sorted(self._garbage - live_ids)
            with ThreadPoolExecutor(PARALLEL, thread_name_prefix="manifest-compact") as pool:
                list(pool.map(self.store.delete, obsolete))
            log.info("manifest %s: %d shard record(s) compacted into %s (%d object(s) removed)", self.store.uri,
                     len(paths), index, len(obsolete))
            self._covered, self._garbage, self.segments = [], set(), 0
            self._index = index
            return True


__all__ = ["RecordLog", "COMPACT_EVERY"]
