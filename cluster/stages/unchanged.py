"""Which documents a read task can skip: those whose rows already hold exactly what it would embed.

A document's fingerprint (:func:`embedder.models.fingerprint.doc_fingerprints`) hashes its text
with everything else that decides its rows. Two places know the fingerprints of what is stored:

* the shard's id file from the run that recorded it (``fp``, ``n_chunks``, ``n_tokens`` per
  document): read anyway by the read task, no extra request. It is trusted only when the previous
  run of this job finished: a run that stopped half-way may have written newer versions of some
  documents before a later change of the source brought the recorded text back;
* the collection itself: every row carries ``embed_fp`` = fingerprint/chunks/tokens. A document
  not in its shard's id file (a renamed shard, a document moved between shards, a lost manifest)
  is looked up there by primary key: it is skipped only when chunk 0 holds its fingerprint, every
  other chunk ``1 .. n-1`` holds the same value and no chunk ``n`` exists (a crash half-way through
  writing a document, or a stale tail, makes it count as changed).

Lookups that fail after retries make documents count as changed (they are embedded again): a
failure costs GPU time, never a stale row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster import contract as c
from cluster.settings import MilvusConfig
from embedder.models.fingerprint import fingerprint_text, parse_fingerprint_text

log = logging.getLogger(__name__)

LOOKUP_DOCS = 1_000  # documents per lookup request
_CLIENTS: dict[str, Any] = {}  # one client per worker process and server


@dataclass(frozen=True)
class ChangeCheck:
    """What a read task needs to tell unchanged documents (one object, passed whole).

    Attributes:
        vector_fp: :func:`embedder.models.fingerprint.vector_fingerprint` of the run.
        trust_manifest: The id files' fingerprints may be used without asking the collection.
        milvus: The server to look documents up in (None: the collection holds nothing of this job yet,
            or has no ``embed_fp`` field).
        collection: The collection's name.
        outage_s: How long lookups are retried through an outage before documents count as changed.
    """

    vector_fp: str
    trust_manifest: bool = True
    milvus: MilvusConfig | None = None
    collection: str = ""
    outage_s: float = 30.0


def _client(cfg: MilvusConfig) -> Any:
    key = f"{cfg.uri}|{cfg.db_name}"
    if key not in _CLIENTS:
        from cluster.milvus.connect import connect

        _CLIENTS[key] = connect(cfg)
    return _CLIENTS[key]


def _get(check: ChangeCheck, keys: list[str]) -> dict[str, str]:
    """``pk -> embed_fp`` of the keys the collection holds."""
    from cluster.milvus.writer import is_transient
    from cluster.retry import retry

    assert check.milvus is not None
    client = _client(check.milvus)
    found: dict[str, str] = {}
    for start in range(0, len(keys), LOOKUP_DOCS):
        part = keys[start:start + LOOKUP_DOCS]
        rows = retry(lambda p=part: client.get(check.collection, ids=p, output_fields=[c.PK, c.EMBED_FP]),
                     what=f"lookup of {len(part)} keys in '{check.collection}'", is_transient=is_transient,
                     for_s=check.outage_s, logger=log)
        found.update({r[c.PK]: r.get(c.EMBED_FP) or "" for r in rows})
    return found


def stored_unchanged(check: ChangeCheck, doc_ids: list[str], fps: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """Which documents the collection holds exactly as ``fps`` say (see the module doc).

    Returns:
        ``(unchanged, n_chunks, n_tokens)``: a mask over ``doc_ids``, and for those the chunks and
        tokens their rows stand for.
    """
    n = len(doc_ids)
    ok, chunks, tokens = np.zeros(n, bool), np.zeros(n, np.int32), np.zeros(n, np.int64)
    if check.milvus is None or not n:
        return ok, chunks, tokens
    try:
        first = _get(check, [c.chunk_pk(d, 0) for d in doc_ids])
        expect: dict[int, str] = {}
        for i, d in enumerate(doc_ids):
            value = first.get(c.chunk_pk(d, 0))
            parsed = parse_fingerprint_text(value)
            if parsed is not None and parsed[0] == int(fps[i]) and parsed[1] >= 1:
                expect[i] = value  # type: ignore[assignment]
                chunks[i], tokens[i] = parsed[1], parsed[2]
        rest = [(i, k) for i in expect for k in range(1, int(chunks[i]) + 1)]
        held = _get(check, [c.chunk_pk(doc_ids[i], k) for i, k in rest]) if rest else {}
        bad = set()
        for i, k in rest:
            value = held.get(c.chunk_pk(doc_ids[i], k))
            if (k < chunks[i] and value != expect[i]) or (k == chunks[i] and value is not None):
                bad.add(i)
        for i in expect:
            ok[i] = i not in bad
    except Exception as e:  # noqa: BLE001 - a failed lookup only costs embedding the documents again
        log.warning("looking up %d document(s) in '%s' failed (%s: %s): they are embedded again", n,
                    check.collection, type(e).__name__, e)
        ok[:] = False
    chunks[~ok], tokens[~ok] = 0, 0
    return ok, chunks, tokens


def fingerprint_column(fps: np.ndarray, n_chunks: np.ndarray, n_tokens: np.ndarray, rows: np.ndarray,
                       is_chunk: np.ndarray) -> list[str | None]:
    """The ``embed_fp`` value of each output row: its document's (``rows``: the document's input row), or None."""
    out: list[str | None] = [None] * len(rows)
    for j in np.flatnonzero(is_chunk):
        i = rows[j]
        if fps[i]:
            out[j] = fingerprint_text(fps[i], n_chunks[i], n_tokens[i])
    return out


__all__ = ["ChangeCheck", "stored_unchanged", "fingerprint_column"]
