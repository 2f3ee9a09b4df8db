"""What ``jobs.plan`` extrapolates from: which shards to sample, from them to any set of shards, and the manifest.

* :func:`choose_sample`: strata of the listing (per format, by size), one shard read of each;
* :class:`Extrapolation`: from the sampled shards (:mod:`jobs.sampling`) to any set of shards, by bytes;
* :func:`shard_changes`: what a run would do per shard, from the manifest, read-only;
* :func:`compare_docs`: which sampled documents the read task would skip as unchanged, from their
  fingerprints and the shard's id file;
* :func:`split_budget`: the sample's shards shared among groups of shards (by bytes).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c
from cluster.manifest.ids import FP
from cluster.source import Shard
from jobs.sampling import ShardSample

if TYPE_CHECKING:
    from jobs.config import JobConfig


# ---- which shards -----------------------------------------------------------------------------------
def choose_sample(shards: list[Shard], k: int) -> list[list[int]]:
    """Strata of ``shards`` (indices), each with its sampled shard first; about ``k`` of them.

    Shards of different formats hold very different tokens per file byte (jsonl.gz compresses text
    about three times, parquet less, jsonl not at all), so each format gets its own strata, in
    number by its share of the bytes (at least one where ``k`` allows). Within a format, a shard
    holding at least a stratum's share of the bytes is a stratum of its own; the others, sorted by
    size, are cut into strata of about equal bytes, and strata holding the most shards are halved
    until the format has its number. Each stratum is read through its middle shard (by size) and stands
    for its bytes. Deterministic: the same listing gives the same sample.
    """
    n = len(shards)
    if n <= k:
        return [[i] for i in range(n)]
    formats: dict[str, list[int]] = {}
    for i, s in enumerate(shards):
        formats.setdefault(s.format, []).append(i)
    total = sum(s.size for s in shards) or 1
    share = {f: k * sum(shards[i].size for i in idx) / total for f, idx in formats.items()}
    quota = {f: max(1 if k >= len(formats) else 0, int(q)) for f, q in share.items()}
    for f in sorted(share, key=lambda f: share[f] - int(share[f]), reverse=True):  # largest remainders
        if sum(quota.values()) >= k:
            break
        quota[f] += 1
    strata: list[list[int]] = []
    for f, idx in sorted(formats.items()):
        if quota[f]:
            strata += _size_strata(shards, idx, quota[f])
    return strata


def _size_strata(shards: list[Shard], idx: list[int], k: int) -> list[list[int]]:
    if len(idx) <= k:
        return [[i] for i in idx]
    order = sorted(idx, key=lambda i: (shards[i].size, shards[i].path))
    alone: list[list[int]] = []
    while k > 1 and len(order) > 1 and shards[order[-1]].size * k >= sum(shards[i].size for i in order):
        alone.append([order.pop()])  # at least a stratum's share of the bytes: a stratum of its own
        k -= 1
    total = sum(shards[i].size for i in order) or 1
    by_slot: dict[int, list[int]] = {}
    acc = 0
    for i in order:  # each to the slot of the middle of its bytes
        by_slot.setdefault(min(k - 1, int((acc + shards[i].size / 2) * k / total)), []).append(i)
        acc += shards[i].size
    strata = [by_slot[g] for g in sorted(by_slot)]
    while len(strata) < k:
        big = max(range(len(strata)), key=lambda g: len(strata[g]))
        if len(strata[big]) < 2:
            break
        half = len(strata[big]) // 2
        strata[big:big + 1] = [strata[big][:half], strata[big][half:]]
    return [[g[len(g) // 2]] + [i for i in g if i != g[len(g) // 2]] for g in strata] + alone


def split_budget(groups: list[tuple[int, int]], k: int) -> list[int]:
    """Shards to sample per group (``(shards, bytes)`` each): all of them when ``k`` allows, else by bytes, at
    least one per non-empty group (so the total may exceed ``k`` by the groups beyond the first)."""
    if sum(n for n, _ in groups) <= k:
        return [n for n, _ in groups]
    total = sum(b for _, b in groups) or 1
    share = [k * b / total for _, b in groups]
    quota = [min(n, max(1 if n else 0, int(q))) for (n, _), q in zip(groups, share)]
    while sum(quota) < k:
        room = [g for g, (n, _) in enumerate(groups) if quota[g] < n]
        if not room:
            break
        quota[max(room, key=lambda g: share[g] - quota[g])] += 1
    return quota


# ---- from the sample to shard sets ----------------------------------------------------------------------
class Extrapolation:
    """Totals for any set of listed shards, from the sampled ones and their strata.

    A sampled shard stands for itself (:meth:`ShardSample.scaled`; an unreadable one for nothing, as
    in the job); any other shard of a stratum for the stratum's counts per file byte (those of its
    readable sampled shards). A shard outside every stratum (the whole corpus's figures when the
    budget did not reach it) takes those of the stratum of its format whose sizes are nearest.
    """

    def __init__(self, shards: list[Shard], strata: list[list[int]], samples: dict[int, ShardSample]) -> None:
        self.samples = {s.shard.path: s for s in samples.values()}
        self.own: dict[str, Counter[str]] = {}
        self.ratio_of: dict[str, Counter[str]] = {}
        self.bounds: dict[str, list[tuple[int, Counter[str]]]] = {}  # format -> (largest size, counts per byte)
        for members in strata:
            counts: Counter[str] = Counter()
            size = 0
            for i in members:
                s = samples.get(i)
                if s is None:
                    continue
                self.own[s.shard.path] = s.scaled()
                if s.error is None:
                    counts.update(self.own[s.shard.path])
                    size += s.shard.size
            per_byte = Counter({k: v / size for k, v in counts.items()}) if size else Counter()
            for i in members:
                self.ratio_of[shards[i].path] = per_byte
            fmt = shards[members[0]].format
            self.bounds.setdefault(fmt, []).append((max(shards[i].size for i in members), per_byte))
        for bounds in self.bounds.values():
            bounds.sort(key=lambda b: b[0])

    def _ratio(self, shard: Shard) -> Counter[str]:
        known = self.ratio_of.get(shard.path)
        if known is not None:
            return known
        bounds = self.bounds.get(shard.format) or sorted((b for v in self.bounds.values() for b in v),
                                                         key=lambda b: b[0])
        if not bounds:
            return Counter()
        edges = [b[0] for b in bounds]
        return bounds[min(bisect.bisect_left(edges, shard.size), len(bounds) - 1)][1]

    def totals(self, shards: list[Shard]) -> tuple[Counter[str], str]:
        """The estimated counts of ``shards`` and how they are known: measured (every shard read in full) or
        extrapolated."""
        total: Counter[str] = Counter()
        exact = True
        for shard in shards:
            mine = self.own.get(shard.path)
            if mine is not None:
                total.update(mine)
                exact = exact and self.samples[shard.path].complete
            else:
                total.update({k: v * shard.size for k, v in self._ratio(shard).items()})
                exact = False
        return total, "measured" if exact else "extrapolated"


# ---- the manifest, read-only ------------------------------------------------------------------------------
def shard_changes(cfg: JobConfig, shards: list[Shard]) -> dict[str, Any]:
    """What a run with this config would do per shard, from the manifest; nothing is written.

    Returns a dict with ``todo`` (the shards the run would process), the lists ``new``, ``changed``,
    ``unchanged``, ``vanished`` (paths) and ``renamed`` (pairs: a vanished record and a new listed
    shard of the same size and version), ``manifest`` (its uri or None) and ``note``; ``id_files``:
    per shard to process, the id file its documents are compared with (relative to ``store``: its
    own record's, or for a renamed shard the vanished record's), ``store`` (the manifest's
    :class:`cluster.manifest.store.Store`, or None) and ``open_run`` (the run the manifest's state
    says did not finish, or None).
    """
    from cluster.manifest import Manifest, Store, job_identity
    from cluster.manifest.manifest import identity_key

    listed = {s.path: s for s in shards}
    result: dict[str, Any] = {"manifest": None, "todo": list(shards), "new": [s.path for s in shards], "changed": [],
                              "unchanged": [], "vanished": [], "renamed": [], "note": "",
                              "id_files": {}, "store": None, "open_run": None}
    if not cfg.checkpoint.uri:
        result["note"] = "no checkpoint.uri: every run processes every shard"
        return result
    store = Store(cfg.checkpoint.uri, cfg.checkpoint.storage_options or cfg.source.storage_options)
    identity = job_identity(cfg)
    if not store.exists(f"{identity_key(identity)}/job.json"):  # Manifest() would create it
        result["note"] = "no manifest for this job identity yet: the first run processes every shard"
        return result
    manifest = Manifest(store, identity)
    records = manifest.records()
    result["manifest"] = manifest.uri
    new, changed, unchanged = [], [], []
    for s in shards:
        rec = records.get(s.path)
        (new if rec is None else unchanged if Manifest.unchanged(rec, s) else changed).append(s.path)
    vanished = [p for p in records if p not in listed]
    by_identity: dict[tuple[Any, Any], list[str]] = {}
    for p in new:
        by_identity.setdefault((listed[p].size, listed[p].version), []).append(p)
    renamed = []
    for p in vanished:
        rec = records[p]
        candidates = by_identity.get((rec.get("size"), rec.get("version")))
        if candidates:
            renamed.append((p, candidates.pop(0)))
    result.update(new=new, changed=changed, unchanged=unchanged, vanished=vanished, renamed=renamed,
                  store=manifest.store, open_run=manifest.state.get("open_run"))
    # What the read task compares each shard's documents with: the record of its path (its prev_ids); for a
    # renamed shard the job asks the collection, which holds what the vanished record's id file says.
    id_files = {p: rec["ids"] for p, rec in records.items() if p in listed and rec.get("ids")}
    id_files.update({b: records[a]["ids"] for a, b in renamed if records[a].get("ids")})
    if cfg.mode == "full" and manifest.run_finished():
        result["note"] = ("mode full after a finished run: a new generation, every shard is embedded again "
                          "(mode: incremental would process only the new and changed ones)")
        result["id_files"] = id_files
        return result
    if cfg.mode == "full":
        todo = [s for s in shards if not (manifest.done(records.get(s.path))
                                          and Manifest.unchanged(records.get(s.path), s))]
        result["note"] = ("mode full, the last run did not finish: it resumes, skipping shards it finished"
                          if len(todo) < len(shards) else "mode full: every shard is embedded")
    else:
        todo = [s for s in shards if not Manifest.unchanged(records.get(s.path), s)]
        result["note"] = "mode incremental: new and changed shards are embedded, unchanged ones skipped"
    result["todo"] = todo
    result["id_files"] = {s.path: id_files[s.path] for s in todo if s.path in id_files}
    return result


def compare_docs(docs: pa.Table, ids: pa.Table) -> Counter[str]:
    """What the read task would do with these sampled documents, given the shard's id file.

    The rule of :meth:`cluster.stages.read.ShardReader._skip_unchanged` with a trusted id file: a
    document whose fingerprint equals the recorded one, with chunks recorded, is skipped (its recorded
    chunks and tokens count as skipped); one recorded with another fingerprint has changed; one
    recorded without a fingerprint (an id file older than fingerprints) is *unknown* (the job asks
    the collection); one not recorded is new. Documents the read task rejects (fingerprint 0) or
    that make no chunk count in none of these.

    Args:
        docs: :attr:`jobs.sampling.ShardSample.docs`.
        ids: The shard's id file (:func:`cluster.manifest.ids.read_ids`).

    Returns:
        ``docs_<kind>``, ``chunks_<kind>`` and ``tokens_<kind>`` for kind unchanged, changed, new, unknown
        (``tokens_unchanged`` is what the job reports as ``tokens_skipped``), ``docs_compared``, and
        ``found_docs`` / ``found_chunks`` / ``found_tokens``: the sampled documents the id file holds and
        their recorded chunks and tokens (for :func:`from_id_file`).
    """
    where = pc.index_in(docs.column(c.DOC_ID), value_set=ids.column(c.DOC_ID).combine_chunks())
    found = where.is_valid().to_numpy(zero_copy_only=False)

    def prev(name: str, dtype: Any) -> np.ndarray:
        return pc.fill_null(pc.take(ids.column(name), where), 0).to_numpy(zero_copy_only=False).astype(dtype)

    prev_n, prev_fp, prev_tokens = prev(c.N_CHUNKS, np.int64), prev(FP, np.uint64), prev(c.N_TOKENS, np.int64)
    fps = docs.column(FP).to_numpy(zero_copy_only=False).astype(np.uint64)
    chunks = docs.column(c.N_CHUNKS).to_numpy(zero_copy_only=False).astype(np.int64)
    tokens = docs.column(c.N_TOKENS).to_numpy(zero_copy_only=False).astype(np.int64)
    has = fps != 0
    unchanged = has & (prev_fp == fps) & (prev_n > 0)
    embedded = has & ~unchanged & (chunks > 0)
    kinds = {"unchanged": unchanged, "unknown": embedded & found & (prev_fp == 0),
             "changed": embedded & found & (prev_fp != 0), "new": embedded & ~found}
    out: Counter[str] = Counter({"docs_compared": int(has.sum()), "found_docs": int((has & found).sum()),
                                 "found_chunks": int(prev_n[has & found].sum()),
                                 "found_tokens": int(prev_tokens[has & found].sum())})
    for kind, mask in kinds.items():
        out[f"docs_{kind}"] = int(mask.sum())
        out[f"chunks_{kind}"] = int((prev_n if kind == "unchanged" else chunks)[mask].sum())
        out[f"tokens_{kind}"] = int((prev_tokens if kind == "unchanged" else tokens)[mask].sum())
    return out


def from_id_file(found: Counter[str], ids: pa.Table) -> Counter[str]:
    """Whole-shard figures of the recorded documents (unchanged, changed, unknown) from a part of the shard.

    The sampled documents count as they are; the id file says how many documents, chunks and tokens
    the shard recorded besides them, and those are shared among unchanged, changed and unknown as the
    sampled documents are (per document: the sample draws documents about evenly, not by length,
    and an edit is taken to be as likely for a long document as for a short one). A document deleted
    since the record counts with the others: a small overestimate.

    Args:
        found: :func:`compare_docs` of the sample.
        ids: The shard's id file.
    """
    out: Counter[str] = Counter()
    n = found["found_docs"]
    if not n:
        return out
    rest = {"docs": max(0, ids.num_rows - n),
            "chunks": max(0, int(pc.sum(ids.column(c.N_CHUNKS)).as_py() or 0) - found["found_chunks"]),
            "tokens": max(0, int(pc.sum(ids.column(c.N_TOKENS)).as_py() or 0) - found["found_tokens"])}
    for kind in ("unchanged", "changed", "unknown"):
        share = found[f"docs_{kind}"] / n
        for what in ("docs", "chunks", "tokens"):
            out[f"{what}_{kind}"] = found[f"{what}_{kind}"] + share * rest[what]
    return out


def all_new(counts: Counter[str]) -> Counter[str]:
    """The counts of a shard with no id file to compare with: every embedded document is new."""
    return Counter({"docs_new": counts["docs_embedded"], "chunks_new": counts["chunks"],
                    "tokens_new": counts["tokens"]})
