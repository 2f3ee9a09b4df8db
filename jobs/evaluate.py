"""``python -m jobs.evaluate --config FILE --pairs PAIRS [--dims 384,256,128,64] [--langs en,de,...] [--json OUT]``

Measures cross-lingual retrieval quality of the job's model and settings on an aligned set (the
same items in several languages): every text is embedded once as a passage and once as a query
(query prefix or instruction applied), and for every (query language -> document language) pair
the queries search the documents of that language. Reported: recall@1, recall@10 and MRR@10 for
dense, sparse (when the model has a sparse head) and hybrid (RRF, k=60) retrieval, per pair and
averaged (all pairs; cross-lingual pairs only). A Matryoshka audit repeats the averages for
each candidate ``--dims`` with the float32 storage per million vectors, and warns when the
configured ``model.dense_dim`` loses more than ``--max-recall-drop`` recall@10 against the full
dimension. A storage audit (:mod:`jobs.storage_audit`) crosses those dimensions with the vector
types of ``milvus.dense_type``. ``--through-milvus`` also loads the documents into a temporary
milvus-lite collection and measures dense retrieval through real Milvus search
(:mod:`jobs.eval_milvus`). The pairs are read by :mod:`jobs.eval_pairs`.

PAIRS: a .jsonl / .jsonl.gz / .parquet file with columns item_id, lang, text (e.g. from
``python -m sample.evalset``), or ``sample`` for the bundled corpus' aligned article bodies.

Exit codes: 0 done (a Matryoshka warning does not change it); 2 invalid config or pairs; 1 failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder import evaluation as ev
from jobs.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, setup_logging
from jobs.config import ConfigError, JobConfig, load_config
from jobs.eval_milvus import evaluate_through_milvus
from jobs.eval_pairs import Pairs, PairsError, averages, read_pairs
from jobs.storage_audit import format_storage_audit, human_bytes, storage_audit

log = logging.getLogger("jobs.evaluate")

#: Hits each retriever contributes to hybrid fusion: what ``cluster.milvus.search`` fuses (candidates = 50).
HYBRID_DEPTH = 50
#: Default ``--max-recall-drop``: recall@10 the configured dimension may lose against the full one.
MAX_RECALL_DROP = 0.02
#: Placeholder for ``source.uri`` when the config has none (the evaluation reads no source).
_NO_SOURCE = "source.uri=(not used by jobs.evaluate)"



def parse_dims(text: str | None) -> list[int | str]:
    """``--dims``: comma-separated integers or ``full``."""
    if not text:
        return list(ev.AUDIT_DIMS)
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "full":
            out.append("full")
            continue
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--dims: {part!r} is not an integer or 'full'") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"--dims: {value} must be positive")
        out.append(value)
    return out


# ------------------------------------------------------------------------------------------ embedding


@dataclass
class Vectors:
    """Full-dimension vectors of the pairs: one query row per pair row, documents as chunks."""

    queries: np.ndarray  # [n, full_dim]
    docs: np.ndarray  # [chunks, full_dim]
    chunk_doc: np.ndarray  # pair row of each chunk
    sparse_queries: Any  # SparseBatch | None
    sparse_docs: Any
    failed: dict[int, str]  # pair row -> why it is left out (as query and as document)
    encode_s: float


def embed_pairs(encoder: Any, pairs: Pairs) -> Vectors:
    """Embed every text as a passage (chunked per the config) and as a query."""
    started = time.perf_counter()
    chunks, passages = encoder.encode_passages(pairs.texts)
    queries = encoder.encode_queries(pairs.texts)
    failed: dict[int, str] = {int(i): f"document: {why}" for i, why in chunks.errors.items()}
    chunk_doc = np.asarray(chunks.doc, dtype=np.int64)
    for c, why in passages.errors.items():
        failed.setdefault(int(chunk_doc[c]), f"document: {why}")
    for i, why in queries.errors.items():
        failed.setdefault(int(i), f"query: {why}")
    return Vectors(queries=queries.dense, docs=passages.dense, chunk_doc=chunk_doc, sparse_queries=queries.sparse,
                   sparse_docs=passages.sparse, failed=failed, encode_s=time.perf_counter() - started)


# ------------------------------------------------------------------------------------------ metrics


def _doc_scores(chunk_scores: np.ndarray, vectors: Vectors, n: int) -> np.ndarray:
    """Chunk scores -> one score per pair row (best chunk); failed rows are never retrieved."""
    scores = ev.max_by_group(chunk_scores, vectors.chunk_doc, n)
    if vectors.failed:
        scores[:, sorted(vectors.failed)] = -np.inf
    return scores


def pair_metrics(pairs: Pairs, failed: dict[int, str], dense: np.ndarray, sparse: np.ndarray | None
                 ) -> list[dict[str, Any]]:
    """Metrics of every (query language, document language) pair from full score matrices (pair rows x pair rows)."""
    rows = []
    ok = np.ones(len(pairs), dtype=bool)
    ok[list(failed)] = False
    index = {lang: np.flatnonzero((pairs.langs == lang) & ok) for lang in pairs.languages}
    for q_lang in pairs.languages:
        for d_lang in pairs.languages:
            q, d = index[q_lang], index[d_lang]
            q_ids, d_ids = pairs.item_ids[q], pairs.item_ids[d]
            dense_sub = dense[np.ix_(q, d)]
            row: dict[str, Any] = {"query_lang": q_lang, "doc_lang": d_lang, "docs": int(len(d)),
                                   "dense": ev.retrieval_metrics(dense_sub, q_ids, d_ids)}
            if sparse is not None:
                sparse_sub = sparse[np.ix_(q, d)]
                row["sparse"] = ev.retrieval_metrics(sparse_sub, q_ids, d_ids)
                fused = ev.rrf_scores([dense_sub, sparse_sub], k=ev.RRF_K, depth=HYBRID_DEPTH)
                row["hybrid"] = ev.retrieval_metrics(np.where(fused > 0, fused, -np.inf), q_ids, d_ids)
            rows.append(row)
    return rows


def _headline(avg: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The average the audit compares: cross-lingual when there is more than one language, else all pairs."""
    return avg.get("cross_lingual", avg["all"])


def evaluate(pairs: Pairs, vectors: Vectors, *, configured_dim: int | None, dims: Sequence[int | str],
             max_recall_drop: float = MAX_RECALL_DROP, dense_type: str = "float32",
             matryoshka_trained: bool | None = None, model: str = "the model") -> dict[str, Any]:
    """Every figure of the report (without Milvus), as a JSON-ready dict."""
    n = len(pairs)
    full_dim = int(vectors.queries.shape[1])
    stored_dim = configured_dim or full_dim
    sparse = None
    if vectors.sparse_queries is not None and vectors.sparse_docs is not None:
        sparse = ev.absent_when_zero(_doc_scores(ev.sparse_scores(vectors.sparse_queries, vectors.sparse_docs),
                                                 vectors, n))

    def dense_at(dim: int) -> np.ndarray:
        q, d = ev.matryoshka(vectors.queries, dim), ev.matryoshka(vectors.docs, dim)
        return _doc_scores(ev.dense_scores(q, d), vectors, n)

    audit_dims = ev.audit_dims(full_dim, dims, configured_dim)
    by_dim: dict[int, list[dict[str, Any]]] = {}
    for dim in sorted(set(audit_dims) | {stored_dim, full_dim}, reverse=True):
        by_dim[dim] = pair_metrics(pairs, vectors.failed, dense_at(dim), sparse)
    rows = by_dim[stored_dim]
    full_head = _headline(averages(by_dim[full_dim]))
    audit = []
    for dim in audit_dims:
        avg = averages(by_dim[dim])
        audit.append({"dim": dim, "bytes_per_million": ev.storage_bytes_per_million(dim, 4),
                      "configured": dim == stored_dim, **avg,
                      "recall@10_drop": ev.recall_drop(full_head["dense"], _headline(avg)["dense"])})
    def headline_of(chunk_scores: np.ndarray) -> dict[str, Any]:
        return _headline(averages(pair_metrics(pairs, vectors.failed, _doc_scores(chunk_scores, vectors, n),
                                               None)))["dense"]

    storage = storage_audit(audit_dims, full_dim, vectors.queries, vectors.docs, headline_of,
                            configured=(stored_dim, dense_type), groups=pairs.langs[vectors.chunk_doc])
    warnings = []
    if configured_dim and configured_dim < full_dim and not matryoshka_trained:
        warnings.append(f"{model} does not say it was trained for Matryoshka truncation (its model card and "
                        f"configs never mention it), and model.dense_dim={configured_dim} cuts its {full_dim} "
                        "dimensions: such a cut costs more than for a Matryoshka-trained model; the audits above "
                        "measure it on this sample")
    if configured_dim and configured_dim < full_dim:
        drop = ev.recall_drop(full_head["dense"], _headline(averages(rows))["dense"])
        if drop > max_recall_drop:
            scope = "cross-lingual" if "cross_lingual" in averages(rows) else "all-pairs"
            warnings.append(f"model.dense_dim={configured_dim} loses {drop:.3f} {scope} dense recall@10 against the "
                            f"full {full_dim} dimensions on this sample (more than --max-recall-drop "
                            f"{max_recall_drop:g}); consider a larger dense_dim (see the Matryoshka audit)")
    return {
        "items": pairs.items, "languages": list(pairs.languages), "texts": n,
        "failed": {f"{pairs.item_ids[i]}/{pairs.langs[i]}": why for i, why in sorted(vectors.failed.items())},
        "full_dim": full_dim, "dim": stored_dim, "modes": [m for m in ("dense", "sparse", "hybrid") if m in rows[0]],
        "pairs": rows, "averages": averages(rows), "matryoshka": audit, "storage": storage,
        "dense_type": dense_type, "max_recall_drop": max_recall_drop,
        "warnings": warnings,
    }



# ------------------------------------------------------------------------------------------ report


def _fmt(value: float) -> str:
    return "  n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:5.3f}"


def _metric_cells(entry: dict[str, Any], modes: Sequence[str]) -> str:
    return " | ".join(" ".join(_fmt(entry[m][k]) for k in ev.METRICS) for m in modes)


def format_report(report: dict[str, Any]) -> str:
    """The console tables: per pair, averages, a recall@10 matrix, the Matryoshka audit, Milvus, warnings."""
    modes = report["modes"]
    width = 17  # "  R@1  R@10 MRR10"
    lines = [f"Retrieval quality of {report['model']} on {report['pairs_source']}: {report['items']} items x "
             f"{len(report['languages'])} languages ({', '.join(report['languages'])}); dense dim {report['dim']}"
             f" of {report['full_dim']}; MRR cut at 10; hybrid = RRF(k={ev.RRF_K}) of the top {HYBRID_DEPTH} "
             f"dense and sparse hits", ""]
    head = f"{'query -> docs':<26}" + " | ".join(f"{m:^{width}}" for m in modes)
    sub = f"{'':<26}" + " | ".join(f"{'R@1':>5} {'R@10':>5} {'MRR10':>5}" for _ in modes)
    lines += [head, sub, "-" * len(sub)]
    for row in report["pairs"]:
        lines.append(f"{row['query_lang'] + ' -> ' + row['doc_lang']:<26}" + _metric_cells(row, modes))
    lines.append("-" * len(sub))
    for key, label in (("all", "all pairs"), ("cross_lingual", "cross-lingual pairs")):
        if key in report["averages"]:
            avg = report["averages"][key]
            lines.append(f"{label + ' (' + str(avg['pairs']) + ')':<26}" + _metric_cells(avg, modes))
    langs = report["languages"]
    if len(langs) > 1:
        cell = {(r["query_lang"], r["doc_lang"]): r["dense"]["recall@10"] for r in report["pairs"]}
        lines += ["", "dense recall@10, query language (rows) -> document language (columns)",
                  "      " + " ".join(f"{d:>5}" for d in langs)]
        for q in langs:
            lines.append(f"{q:<5} " + " ".join(_fmt(cell[(q, d)]) for d in langs))
    scope = "cross-lingual" if len(langs) > 1 else "all-pairs"
    lines += ["", f"Matryoshka audit ({scope} averages; float32 storage per million vectors, index excluded)"]
    audit_modes = [m for m in ("dense", "hybrid") if m in modes]
    lines.append(f"{'':>5} {'storage':>10}  " + " | ".join(f"{m:^{width}}" for m in audit_modes)
                 + f"  {'dense R@10':>10}")
    metric_head = f"{'R@1':>5} {'R@10':>5} {'MRR10':>5}"
    lines.append(f"{'dim':>5} {'per 1M':>10}  " + " | ".join(metric_head for _ in audit_modes) + f"  {'drop':>10}")
    for row in report["matryoshka"]:
        avg = row.get("cross_lingual", row["all"])
        mark = " <- model.dense_dim" if row["configured"] and row["dim"] != report["full_dim"] else ""
        lines.append(f"{row['dim']:>5} {human_bytes(row['bytes_per_million']):>10}  "
                     + " | ".join(" ".join(_fmt(avg[m][k]) for k in ev.METRICS) for m in audit_modes)
                     + f"  {row['recall@10_drop']:>+10.3f}{mark}")
    if report.get("storage"):
        lines += [""] + format_storage_audit(report["storage"], scope)
    milvus = report.get("milvus")
    if milvus:
        mem = report["averages"]
        lines += ["", f"Through Milvus ({milvus['index']}; dim {milvus['dim']}, {milvus['searches']} searches "
                      f"in {milvus['search_s']:.1f} s): dense R@1 R@10 MRR10"]
        for key, label in (("all", "all pairs"), ("cross_lingual", "cross-lingual pairs")):
            if key in milvus["averages"]:
                lines.append(f"{label:<26}milvus " + " ".join(_fmt(milvus["averages"][key]["dense"][k])
                                                             for k in ev.METRICS)
                             + "   in memory " + " ".join(_fmt(mem[key]["dense"][k]) for k in ev.METRICS))
    if report["failed"]:
        lines += ["", f"{len(report['failed'])} text(s) left out: "
                      + "; ".join(f"{k}: {v}" for k, v in list(report["failed"].items())[:5])]
    for warning in report["warnings"]:
        lines += ["", f"WARNING: {warning}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def _json_safe(value: Any) -> Any:
    """NaN (a pair without queries) as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _load(config: str, overrides: Sequence[str]) -> JobConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        if "source.uri" not in str(e):
            raise
        return load_config(config, [_NO_SOURCE, *overrides])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="the job's YAML config (its model, batch and chunking sections are used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.dense_dim=128 (repeatable)")
    p.add_argument("--pairs", required=True, help="aligned set: .jsonl/.jsonl.gz/.parquet with item_id, lang, text; "
                                                  "or 'sample' (the bundled corpus)")
    p.add_argument("--langs", help="comma-separated languages to use, in display order (default: all in the file)")
    p.add_argument("--max-items", type=int, help="use only the first N item ids (sorted), for a quick run")
    p.add_argument("--dims", type=parse_dims, default=list(ev.AUDIT_DIMS),
                   help="Matryoshka audit dimensions, comma-separated, 'full' allowed "
                        "(default: full,768,512,256,128,64; those above the model's dimension are skipped)")
    p.add_argument("--max-recall-drop", type=float, default=MAX_RECALL_DROP,
                   help=f"warn when model.dense_dim loses more recall@10 than this (default {MAX_RECALL_DROP})")
    p.add_argument("--through-milvus", action="store_true",
                   help="also measure dense retrieval through a temporary milvus-lite collection")
    p.add_argument("--milvus-layout", choices=("per_language", "filter"), default="per_language",
                   help="--through-milvus: one collection per document language searched without a filter "
                        "(default), or one collection searched with a lang filter")
    p.add_argument("--json", type=Path, help="write the report as JSON to this file")
    args = p.parse_args(argv)
    setup_logging()
    try:
        cfg = _load(args.config, args.overrides)
    except ConfigError as e:
        log.error("invalid config: %s", e)
        return EXIT_INVALID
    langs = [x.strip() for x in args.langs.split(",") if x.strip()] if args.langs else None
    if args.max_items is not None and args.max_items < 1:
        log.error("--max-items must be >= 1")
        return EXIT_INVALID
    try:
        pairs = read_pairs(args.pairs, langs, args.max_items)
    except PairsError as e:
        log.error("%s", e)
        return EXIT_INVALID
    log.info("%d texts: %d items in %d languages (%s)", len(pairs), pairs.items, len(pairs.languages),
             ", ".join(pairs.languages))

    from embedder.encoder import Encoder

    started = time.perf_counter()
    configured_dim = cfg.model.dense_dim
    try:
        encoder = Encoder(dataclasses.replace(cfg.model, dense_dim=None), cfg.batch, cfg.chunking)
    except (ValueError, TypeError, FileNotFoundError, ImportError, OSError) as e:
        log.error("cannot load the model: %s", e)
        return EXIT_INVALID
    if configured_dim and configured_dim > encoder.dim:
        log.error("model.dense_dim %d is larger than the model's dimension %d", configured_dim, encoder.dim)
        return EXIT_INVALID
    try:
        vectors = embed_pairs(encoder, pairs)
        log.info("embedded %d passages and %d queries in %.1f s", len(vectors.docs), len(vectors.queries),
                 vectors.encode_s)
        report: dict[str, Any] = {"model": cfg.model.name, "pairs_source": args.pairs}
        from embedder.models.info import matryoshka_trained

        report.update(evaluate(pairs, vectors, configured_dim=configured_dim, dims=args.dims,
                               max_recall_drop=args.max_recall_drop, dense_type=cfg.milvus.dense_type,
                               matryoshka_trained=matryoshka_trained(encoder.info.path), model=cfg.model.name))
        report["encode_s"] = round(vectors.encode_s, 3)
        if args.through_milvus:
            report["milvus"] = evaluate_through_milvus(pairs, vectors, configured_dim or encoder.dim,
                                                       layout=args.milvus_layout)
        report["elapsed_s"] = round(time.perf_counter() - started, 3)
    except Exception:
        log.exception("the evaluation failed")
        return EXIT_FAILED
    print(format_report(report))
    for warning in report["warnings"]:
        log.warning("%s", warning)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_safe(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
