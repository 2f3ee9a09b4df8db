"""``python -m jobs.reindex --config FILE [--collection NAME] [--set key=value ...]``
``python -m jobs.reindex --config FILE --rollback``

Backfill re-indexing without search downtime: embed the whole source into a new versioned
collection, validate it (row count equals the chunks embedded; sampled documents find
themselves as the top hit), then point ``milvus.alias`` at it in one atomic step. The previous
collection is kept for ``--rollback``; older ones are dropped per ``reindex.retention``.

Resumable: the build in progress is recorded (``<checkpoint.uri>/aliases/<alias>.build.json``)
before its first write, and a re-run of the same reindex (same alias, source, model, dimension,
chunking: the same job identity) continues that collection, skipping the shards its manifest
records as finished; a build that is complete (and validated) but was not swapped in is only
validated and swapped. Builds that are abandoned (superseded by a build of other settings, or
failed validation) and collections ``<alias>__...`` that are neither live, kept nor in progress
are logged and dropped with retention after the next successful swap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from jobs.cli import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    config_or_none,
    execute,
    setup_logging,
    write_summary,
)
from jobs.config import JobConfig, redact

log = logging.getLogger("jobs.reindex")

def derived_name(cfg: JobConfig) -> str:
    """``<alias>__<model>_d<dim>_<UTC time>``: versioned, sortable, valid as a Milvus name."""
    model = re.sub(r"[^0-9a-zA-Z]+", "_", cfg.model.name.rstrip("/").rsplit("/", 1)[-1]).strip("_")[:40] or "model"
    dim = cfg.model.dense_dim or "full"
    return f"{cfg.milvus.alias}__{model}_d{dim}_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"


def manifest_records(cfg: JobConfig) -> list[dict[str, Any]]:
    """The shard records this build finished (its current generation)."""
    from cluster.manifest import Manifest, Store, job_identity

    manifest = Manifest(Store(cfg.checkpoint.uri, cfg.checkpoint.storage_options or cfg.source.storage_options),
                        job_identity(cfg))
    return [r for r in manifest.records().values() if manifest.done(r)]


def storage_options(cfg: JobConfig) -> dict[str, Any]:
    return dict(cfg.checkpoint.storage_options or cfg.source.storage_options)


def build_identity(cfg: JobConfig) -> str:
    """What makes two runs the same build: the job identity with the alias in place of the collection name."""
    from cluster.manifest.manifest import identity_key, job_identity

    identity = job_identity(cfg)
    identity["milvus"] = {**identity["milvus"], "collection": None, "alias": cfg.milvus.alias}
    return identity_key(identity)


def is_derived(alias: str, name: str) -> bool:
    """``name`` is one :func:`derived_name` gives for ``alias`` (and not for another alias ``<alias>__x``)."""
    return re.fullmatch(re.escape(alias) + r"__(?:[0-9A-Za-z]|_(?!_))+_?_d(?:\d+|full)_\d{14}", name) is not None


def manifest_state(cfg: JobConfig) -> dict[str, Any]:
    """The manifest's ``state.json`` of this build (empty when none), read without creating anything."""
    from cluster.manifest import Store, job_identity
    from cluster.manifest.manifest import identity_key

    return dict(Store(cfg.checkpoint.uri, storage_options(cfg)).get_json(
        f"{identity_key(job_identity(cfg))}/state.json") or {})


def held_by(cfg: JobConfig, collection: str) -> str | None:
    """Who holds the lease of ``collection`` when a live run does (it is being written): never drop it."""
    from cluster.manifest import Lease, Store, target_key
    from cluster.manifest.lease import describe

    store = Store(cfg.checkpoint.uri, storage_options(cfg)).child("leases")
    lease = Lease(store, target_key(cfg.milvus.uri, cfg.milvus.db_name, collection), {})
    record = store.get_json(lease.rel)
    return describe(record) if record and lease.stale(record) is None else None


def validate(cfg: JobConfig, milvus: Any, collection: str, summary: dict[str, Any]) -> None:
    """Row count and self-retrieval checks; raises ValueError when the new collection is not fit to serve.

    After a long build the pooled connection has been idle for hours: a fresh one is opened, and
    every call is retried on transient errors.
    """
    from cluster.milvus.alias_swap import open_retrying
    from cluster.milvus.search import search
    from embedder.encoder import Encoder

    with open_retrying(milvus) as client:
        client.load_collection(collection)
        rows = int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
        # Chunks of every shard recorded for this build (a resumed build skipped some shards).
        expected = sum(int(r.get("chunks") or 0) for r in manifest_records(cfg))
        if summary.get("duplicate_ids"):
            # Documents repeated under one id keep one set of chunks: fewer rows than chunks, never more.
            if not 0 < rows <= expected:
                raise ValueError(f"{collection} holds {rows} rows for {expected} chunks embedded")
        elif rows != expected:
            raise ValueError(f"{collection} holds {rows} rows but {expected} chunks were embedded")
        if not rows or not cfg.reindex.validate_sample:
            return
        if not cfg.milvus.store_text:
            log.warning("milvus.store_text is off: self-retrieval check skipped")
            return
        candidates = client.query(collection, filter="chunk_index == 0", output_fields=["pk", "text"], limit=1000)
        sample = random.Random(0).sample(candidates, min(cfg.reindex.validate_sample, len(candidates)))
        encoder = Encoder(cfg.model, cfg.batch, cfg.chunking)
        _, emb = encoder.encode_passages([r["text"] for r in sample])
        misses = []
        for i, row in enumerate(sample):
            hits = search(client, collection, dense=emb.dense[i], mode="dense", top_k=3, output_fields=["doc_id"])
            best = hits[0]["score"] if hits else None
            if not any(h["pk"] == row["pk"] and h["score"] >= best - 1e-4 for h in hits):
                misses.append(row["pk"])
        if misses:
            raise ValueError(f"{len(misses)} of {len(sample)} sampled documents do not find themselves as the "
                             f"top hit in {collection} (e.g. {misses[:3]})")
        log.info("validated %s: %d rows, %d/%d sampled documents are their own top hit", collection, rows,
                 len(sample), len(sample))


def check_alias_name(cfg: JobConfig, the_plan: Any) -> None:
    """The alias must not be a real collection's name (checked before hours of embedding, not after)."""
    from cluster.milvus.alias_swap import alias_target, open_retrying

    with open_retrying(the_plan.milvus) as client:
        if client.has_collection(cfg.milvus.alias) and alias_target(client, cfg.milvus.alias) is None:
            raise ValueError(f"milvus.alias {cfg.milvus.alias!r} is the name of a real collection; readers need an "
                             "alias: choose another name, or rename that collection")


def swap(cfg: JobConfig, milvus: Any, collection: str) -> list[str]:
    """Point the alias at ``collection``, record it, apply retention; returns dropped collections.

    Retention drops, each with a log line: the collections of the alias history beyond
    ``reindex.retention``, the builds recorded as abandoned, and collections named like this alias's
    builds (``<alias>__<model>_d<dim>_<time>``) that nothing accounts for. Never dropped: the new
    target, the previous one (``--rollback``), the collections retention keeps, the build in
    progress (a re-run continues it), any collection an alias points at, one whose lease a live run holds.
    """
    from cluster.manifest.alias_records import AliasBuilds, AliasHistory
    from cluster.milvus.alias_swap import alias_targets, drop_collections, open_retrying, point_alias

    alias, retention = str(cfg.milvus.alias), cfg.reindex.retention
    history = AliasHistory(cfg.checkpoint.uri, storage_options(cfg), alias)
    builds = AliasBuilds(cfg.checkpoint.uri, storage_options(cfg), alias)
    entries = [e for e in history.load() if e["collection"] != collection]
    with open_retrying(milvus) as client:
        previous = point_alias(client, alias, collection)
        if previous and previous != collection and previous not in [e["collection"] for e in entries]:
            entries.append({"collection": previous, "at": time.time()})  # an alias made by hand
        entries.append({"collection": collection, "at": time.time()})
        history.save(entries)  # the swap is recorded before anything is dropped
        state = builds.load()
        if (state["current"] or {}).get("collection") == collection:
            state["current"] = None
        in_progress = (state["current"] or {}).get("collection")
        protect = {collection, previous or "", in_progress or ""}
        protect |= {e["collection"] for e in entries[-retention:]} | set(alias_targets(client).values())

        reasons: dict[str, str] = {}
        for e in entries[:-retention]:
            reasons.setdefault(e["collection"], f"older than the {retention} collections reindex.retention keeps")
        for a in state["abandoned"]:
            reasons.setdefault(a["collection"], f"abandoned build ({a.get('reason', 'superseded')})")
        accounted = {e["collection"] for e in entries} | set(reasons) | protect
        existing = [str(n) for n in client.list_collections()]
        for name in existing:
            if name not in accounted and is_derived(alias, name):
                reasons[name] = ("left by an earlier build of this alias: neither live, kept for --rollback, "
                                 "nor in progress")
        doomed, busy = [], set()
        for name, why in reasons.items():
            if name in protect or name not in existing:
                continue
            holder = held_by(cfg, name)
            if holder:
                busy.add(name)
                log.warning("%s (%s) is kept: a live run is writing it (%s)", name, why, holder)
                continue
            log.warning("retention drops %s: %s", name, why)
            doomed.append(name)
        dropped = drop_collections(client, doomed, protect=protect)
        history.save([e for e in entries if e["collection"] not in dropped])
        state["abandoned"] = [a for a in state["abandoned"] if a["collection"] in busy]
        builds.save(state)
    return dropped


def rollback(cfg: JobConfig) -> str:
    """Point the alias back at the collection before the live one."""
    from cluster.manifest import AliasHistory
    from cluster.milvus.alias_swap import alias_target, open_retrying, point_alias

    history = AliasHistory(cfg.checkpoint.uri, storage_options(cfg), cfg.milvus.alias)
    entries = history.load()
    with open_retrying(cfg.milvus) as client:
        live = alias_target(client, cfg.milvus.alias)
        names = [e["collection"] for e in entries]
        before = [e["collection"] for e in entries[:names.index(live)] if not e.get("rolled_back")] \
            if live in names else []
        if not before:
            raise ValueError(f"no collection before {live!r} in the history of alias {cfg.milvus.alias!r}")
        target = before[-1]
        if not client.has_collection(target):
            raise ValueError(f"the previous collection {target!r} was dropped; nothing to roll back to")
        point_alias(client, cfg.milvus.alias, target)
        # The live collection is always the last entry; the one rolled back from goes to the front,
        # first in line for retention and never a rollback target again.
        rolled = [{**e, "rolled_back": True} for e in entries if e["collection"] == live]
        rest = [e for e in entries if e["collection"] not in (live, target)]
        history.save(rolled + rest + [e for e in entries if e["collection"] == target])
        return target


def choose_collection(cfg: JobConfig, given: str | None) -> tuple[str, dict[str, Any] | None]:
    """The collection of this build, recorded as the alias's build in progress before anything is written.

    Returns ``(name, continued)``: ``continued`` is the recorded build this run continues (same
    collection and job identity), None for a new build.
    """
    from cluster.manifest.alias_records import AliasBuilds

    builds = AliasBuilds(cfg.checkpoint.uri, storage_options(cfg), str(cfg.milvus.alias))
    identity = build_identity(cfg)
    current = builds.load()["current"]
    if given:
        name = given
    elif current and current.get("identity") == identity:
        name = str(current["collection"])
    else:
        name = derived_name(cfg)
        while current and name == current.get("collection"):  # a build of other settings started this second
            time.sleep(0.2)
            name = derived_name(cfg)
    dataclasses.replace(cfg.milvus, collection=name)  # a valid name (ValueError) before it is recorded
    continued, superseded = builds.start(name, identity)
    if superseded:
        log.warning("the unfinished build of %s (started %s) is superseded by %s: no re-run continues it, and "
                    "retention drops it after the next successful swap", superseded["collection"],
                    _when(superseded.get("started_at")), name)
    if continued:
        log.info("continuing the build of %s started %s (%s): finished shards are skipped", name,
                 _when(continued.get("started_at")), continued.get("state"))
    return name, continued


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t))) if t else "?"


def validate_and_swap(cfg: JobConfig, milvus: Any, name: str, summary: dict[str, Any], builds: Any) -> list[str]:
    """Validate a complete build (a failure abandons it: the next run starts a new one), record it validated,
    then move the alias to it; returns the collections retention dropped."""
    from cluster.manifest.alias_records import VALIDATED

    try:
        validate(cfg, milvus, name, summary)
    except ValueError as e:
        builds.abandon(name, f"failed validation: {e}")
        raise
    builds.set_state(name, VALIDATED)
    return swap(cfg, milvus, name)


def finish_build(cfg: JobConfig, name: str, continued: dict[str, Any], summary_path: Path | None) -> int:
    """A recorded build whose embedding is complete: validate it (unless it was) and swap it in; no re-embedding."""
    from cluster.manifest.alias_records import VALIDATED, AliasBuilds

    builds = AliasBuilds(cfg.checkpoint.uri, storage_options(cfg), str(cfg.milvus.alias))
    summary = dict(manifest_state(cfg).get("summary") or {})
    try:
        if continued.get("state") != VALIDATED:
            log.info("the build of %s is complete: validating it", name)
            dropped = validate_and_swap(cfg, cfg.milvus, name, summary, builds)
        else:
            log.info("the build of %s is complete and validated: swapping it in", name)
            dropped = swap(cfg, cfg.milvus, name)
    except Exception as e:
        log.error("reindex failed (%s: %s); the alias %s was not moved", type(e).__name__, e, cfg.milvus.alias)
        write_summary(summary_path, {**summary, "collection": name}, failed=True)
        return EXIT_FAILED
    done = {**summary, "shards_done": 0, "shards_skipped": summary.get("shards_done", 0) +
            summary.get("shards_skipped", 0), "collection": name, "alias": cfg.milvus.alias, "dropped": dropped,
            "resumed": "validated and swapped only: the build was complete"}
    log.info("reindex done: %s", json.dumps(done))
    write_summary(summary_path, done)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.reindex", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--collection", help="name of the new collection (default: the build in progress of the same "
                                        "settings, else derived from alias, model, dim, time)")
    p.add_argument("--rollback", action="store_true", help="point the alias back at the previous collection")
    p.add_argument("--summary", help="write the build's run summary (plus the collection name) as JSON here")
    args = p.parse_args(argv)
    setup_logging()
    cfg = config_or_none(args.config, args.overrides, log)
    if cfg is None:
        return EXIT_INVALID
    if not cfg.milvus.alias or not cfg.checkpoint.uri:
        log.error("invalid config: jobs.reindex needs milvus.alias (what readers query) and checkpoint.uri "
                  "(its history)")
        return EXIT_INVALID
    if args.rollback:
        try:
            log.info("alias %s now points at %s", cfg.milvus.alias, rollback(cfg))
            return EXIT_OK
        except ValueError as e:
            log.error("cannot roll back: %s", e)
            return EXIT_INVALID
    cfg = dataclasses.replace(cfg, mode="full")
    try:
        name, continued = choose_collection(cfg, args.collection)
    except ValueError as e:
        log.error("invalid config: %s", e)
        return EXIT_INVALID
    except Exception as e:  # the first touch of the checkpoint storage: nothing was done yet
        log.error("cannot start: the build record under checkpoint.uri %s cannot be used: %s: %s",
                  cfg.checkpoint.uri, type(e).__name__, e)
        return EXIT_INVALID
    cfg = dataclasses.replace(cfg, milvus=dataclasses.replace(cfg.milvus, collection=name))
    summary_path = Path(args.summary) if args.summary else None
    if continued and (continued.get("state") == "validated" or manifest_state(cfg).get("finished")):
        return finish_build(cfg, name, continued, summary_path)
    log.info("reindex into %s, config %s", name, json.dumps(redact(cfg), default=str))

    def after(the_plan: Any, summary: dict[str, Any]) -> dict[str, Any]:
        from cluster.manifest.alias_records import AliasBuilds

        builds = AliasBuilds(cfg.checkpoint.uri, storage_options(cfg), str(cfg.milvus.alias))
        dropped = validate_and_swap(cfg, the_plan.milvus, name, summary, builds)
        done = {**summary, "collection": name, "alias": cfg.milvus.alias, "dropped": dropped}
        log.info("reindex done: %s", json.dumps(done))
        return done

    code = execute(cfg, log, summary_path, check=check_alias_name, after=after)
    if code not in (EXIT_OK, EXIT_REJECTED):
        log.error("reindex failed; the alias %s was not moved (run the same command again to continue the build "
                  "of %s)", cfg.milvus.alias, name)
    return code


if __name__ == "__main__":
    sys.exit(main())
