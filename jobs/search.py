"""``python -m jobs.search --config FILE [--top-k K] [--mode dense|sparse|hybrid] "query text"``

Embeds the query with the job's model and settings (query prefix or instruction applied) and
prints one JSON line per hit: pk, doc_id, chunk_index, score, text (when stored), metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.cli import EXIT_INVALID, EXIT_OK, config_or_none, setup_logging

log = logging.getLogger("jobs.search")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.search", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True, help="the YAML config the collection was built with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--mode", choices=("dense", "sparse", "hybrid"), default=None,
                   help="default: hybrid when the collection has sparse vectors, else dense")
    p.add_argument("--format", choices=("json", "table"), default="json",
                   help="json: one JSON object per line (default); table: rank, score, doc_id, language, text")
    p.add_argument("query", nargs="+", help="query text (several arguments are joined by spaces)")
    args = p.parse_args(argv)
    setup_logging()
    cfg = config_or_none(args.config, args.overrides, log)
    if cfg is None:
        return EXIT_INVALID

    from cluster.milvus.connect import connect
    from cluster.milvus.search import search
    from embedder.encoder import Encoder

    encoder = Encoder(cfg.model, cfg.batch, cfg.chunking)
    mode = args.mode or ("hybrid" if encoder.has_sparse else "dense")
    if mode != "dense" and not encoder.has_sparse:
        log.error("--mode %s needs sparse vectors, but %s has no sparse head; use --mode dense", mode, cfg.model.name)
        return EXIT_INVALID
    emb = encoder.encode_queries([" ".join(args.query)])
    sparse = None
    if emb.sparse is not None:
        sparse = (emb.sparse.indices, emb.sparse.values)
    client = connect(cfg.milvus)
    target = cfg.milvus.alias or cfg.milvus.collection  # readers go through the alias when there is one
    try:
        if not client.has_collection(target):
            log.error("collection %r does not exist; run python -m jobs.embed (or jobs.reindex) first", target)
            return EXIT_INVALID
        client.load_collection(target)  # a no-op when loaded; a fresh milvus-lite opens it released
        hits = search(client, target, dense=emb.dense[0], sparse=sparse, mode=mode, top_k=args.top_k,
                      output_fields=None)
    finally:
        client.close()
    for rank, hit in enumerate(hits, 1):
        if args.format == "json":
            print(json.dumps(hit, ensure_ascii=False, default=str))
        else:
            lang = (hit.get("metadata") or {}).get("lang", "")
            text = " ".join(str(hit.get("text") or "").split())
            print(f"{rank:>2}  {hit['score']:.4f}  {hit['doc_id'] + '#' + str(hit['chunk_index']):<34} {lang:<3} "
                  f"{text[:70]}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
