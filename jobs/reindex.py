"""``python -m jobs.reindex --config FILE [--collection NAME] [--set key=value ...]``
``python -m jobs.reindex --config FILE --rollback``

Backfill re-indexing without search downtime: embed the whole source into a new versioned
collection, validate it (row count equals the chunks embedded; sampled documents find
themselves as the top hit), then point ``milvus.alias`` at it in one atomic step. The previous
collection is kept for ``--rollback``; older ones are dropped per ``reindex.retention``.
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

from jobs.cli import EXIT_INVALID, EXIT_OK, EXIT_REJECTED, config_or_none, execute, setup_logging
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


def validate(cfg: JobConfig, milvus: Any, collection: str, summary: dict[str, Any]) -> None:
    """Row count and self-retrieval checks; raises ValueError when the new collection is not fit to serve."""
    from cluster.milvus.connect import connect
    from cluster.milvus.search import search
    from embedder.encoder import Encoder

    client = connect(milvus)
    try:
        client.load_collection(collection)
        rows = int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
        # Chunks of every shard recorded for this build (a resumed build skipped some shards).
        expected = sum(int(r.get("chunks") or 0) for r in manifest_records(cfg))
        if summary["duplicate_ids"]:
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
    finally:
        client.close()


def check_alias_name(cfg: JobConfig, the_plan: Any) -> None:
    """The alias must not be a real collection's name (checked before hours of embedding, not after)."""
    from cluster.milvus.aliases import alias_target

    client = the_plan.client
    if client.has_collection(cfg.milvus.alias) and alias_target(client, cfg.milvus.alias) is None:
        raise ValueError(f"milvus.alias {cfg.milvus.alias!r} is the name of a real collection; readers need an "
                         "alias: choose another name, or rename that collection")


def swap(cfg: JobConfig, milvus: Any, collection: str) -> list[str]:
    """Point the alias at ``collection``, record it, apply retention; returns dropped collections."""
    from cluster.manifest import AliasHistory
    from cluster.milvus.aliases import drop_collections, point_alias
    from cluster.milvus.connect import connect

    history = AliasHistory(cfg.checkpoint.uri, cfg.checkpoint.storage_options or cfg.source.storage_options,
                           cfg.milvus.alias)
    entries = [e for e in history.load() if e["collection"] != collection]
    client = connect(milvus)
    try:
        previous = point_alias(client, cfg.milvus.alias, collection)
        if previous and previous not in [e["collection"] for e in entries]:  # an alias made by hand
            entries.append({"collection": previous, "at": time.time()})
        entries.append({"collection": collection, "at": time.time()})
        dropped = drop_collections(client, [e["collection"] for e in entries[:-cfg.reindex.retention]],
                                   protect={collection, previous or ""})
        history.save([e for e in entries if e["collection"] not in dropped])
    finally:
        client.close()
    return dropped


def rollback(cfg: JobConfig) -> str:
    """Point the alias back at the collection before the live one."""
    from cluster.manifest import AliasHistory
    from cluster.milvus.aliases import alias_target, point_alias
    from cluster.milvus.connect import connect

    history = AliasHistory(cfg.checkpoint.uri, cfg.checkpoint.storage_options or cfg.source.storage_options,
                           cfg.milvus.alias)
    entries = history.load()
    client = connect(cfg.milvus)
    try:
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
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.reindex", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--collection", help="name of the new collection (default: derived from alias, model, dim, time)")
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
    name = args.collection or derived_name(cfg)
    cfg = dataclasses.replace(cfg, mode="full", milvus=dataclasses.replace(cfg.milvus, collection=name))
    log.info("reindex into %s, config %s", name, json.dumps(redact(cfg), default=str))

    def after(the_plan: Any, summary: dict[str, Any]) -> dict[str, Any]:
        validate(cfg, the_plan.milvus, name, summary)
        dropped = swap(cfg, the_plan.milvus, name)
        done = {**summary, "collection": name, "alias": cfg.milvus.alias, "dropped": dropped}
        log.info("reindex done: %s", json.dumps(done))
        return done

    code = execute(cfg, log, Path(args.summary) if args.summary else None, check=check_alias_name, after=after)
    if code not in (EXIT_OK, EXIT_REJECTED):
        log.error("reindex failed; the alias %s was not moved", cfg.milvus.alias)
    return code

if __name__ == "__main__":
    sys.exit(main())
