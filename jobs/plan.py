"""``python -m jobs.plan --config FILE [--set key=value ...] [--json]``: what a run would cost, before it runs.

Lists the source as the job does, reads a bounded sample of it with the job's readers, tokenizes
the sample with the job's tokenizer and chunking, and extrapolates by bytes: documents, chunks,
tokens (in all and per language), what an incremental run would do per shard (from the manifest,
read-only), GPU-hours per GPU kind, vector and index storage, and bulk-import files. Every figure
is labelled measured, extrapolated (from the sample) or assumed (jobs/costs.py). No Ray, no model
weights, nothing written. Exit codes: 0 done; 2 invalid config, or a source that cannot be listed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from typing import Any

from jobs import costs
from jobs.cli import EXIT_INVALID, EXIT_OK, config_or_none, setup_logging
from jobs.config import JobConfig

log = logging.getLogger("jobs.plan")

DEFAULT_SAMPLE_SHARDS = 64
DEFAULT_SAMPLE_BYTES = 1 << 20  # of text per sampled shard
TOTALS = ("docs", "docs_rejected", "chunks", "tokens")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.plan", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML job config (the one the run would use)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as for jobs.embed (repeatable)")
    p.add_argument("--sample-shards", type=int, default=DEFAULT_SAMPLE_SHARDS, metavar="N",
                   help=f"shards to read, one per stratum of similar size (default {DEFAULT_SAMPLE_SHARDS})")
    p.add_argument("--sample-bytes", type=int, default=DEFAULT_SAMPLE_BYTES, metavar="BYTES",
                   help=f"text to read per sampled shard, at most (default {DEFAULT_SAMPLE_BYTES >> 20} MiB)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                   help="processes reading and tokenizing the sample (default: the cores, at most 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def fig(value: Any, basis: str, **extra: Any) -> dict[str, Any]:
    """One figure and how it is known: measured, extrapolated (from the sample) or assumed."""
    return {"value": value, "basis": basis, **extra}


def estimate(cfg: JobConfig, *, sample_shards: int = DEFAULT_SAMPLE_SHARDS,
             sample_bytes: int = DEFAULT_SAMPLE_BYTES, workers: int = 1) -> dict[str, Any]:
    """Every figure of the plan as one JSON-able dict.

    Raises:
        SourceError: The source cannot be listed.
        ValueError / FileNotFoundError: The model folder or the settings are not usable.
    """
    from cluster.source import list_shards
    from cluster.stages.tokenize import get_tokenizer
    from embedder.models.info import load_model_info, read_model_json
    from jobs.estimate import Extrapolation, choose_sample, shard_changes
    from jobs.sampling import sample_shards as read_sample

    if sample_shards < 1 or sample_bytes < 1:
        raise ValueError("--sample-shards and --sample-bytes must be >= 1")
    started = time.monotonic()
    shards = list_shards(cfg.source)
    list_s = time.monotonic() - started
    info = load_model_info(cfg.model)
    if info.dim is None:
        raise ValueError(f"cannot tell the output dimension of {cfg.model.name} from its module configs")
    if cfg.model.dense_dim is not None and cfg.model.dense_dim > info.dim:
        raise ValueError(f"model.dense_dim {cfg.model.dense_dim} is larger than {cfg.model.name}'s dimension "
                         f"{info.dim}")
    if cfg.model.sparse is True and not info.has_sparse_head:
        raise ValueError(f"model.sparse is true but {cfg.model.name} has no sparse head")
    tok = get_tokenizer(cfg.model, cfg.chunking)
    t0 = time.monotonic()
    changes = shard_changes(cfg, shards)
    manifest_s = time.monotonic() - t0

    todo = changes["todo"]
    # The sample is drawn from the shards to process; what the budget leaves, from the others (for the
    # figures of the whole corpus).
    todo_paths = {s.path for s in todo}
    rest = [s for s in shards if s.path not in todo_paths]
    pool = todo + rest
    strata = choose_sample(todo, sample_shards) if todo else []
    if len(strata) < sample_shards and rest:
        strata += [[i + len(todo) for i in m] for m in choose_sample(rest, sample_shards - len(strata))]
    t0 = time.monotonic()
    chosen = [m[0] for m in strata]
    picked = dict(zip(chosen, read_sample([pool[i] for i in chosen], cfg, sample_bytes, workers)))
    retry = [m[1] for m in strata if len(m) > 1 and picked[m[0]].error is not None]  # its stratum needs a reading
    picked.update(zip(retry, read_sample([pool[i] for i in retry], cfg, sample_bytes, workers)))
    sample_s = time.monotonic() - t0
    ex = Extrapolation(pool, strata, picked)
    todo_counts, todo_basis = ex.totals(todo)
    all_counts, all_basis = ex.totals(shards)
    read = list(picked.values())
    read_counts: Counter[str] = sum((s.counts for s in read), Counter())

    dim = cfg.model.dense_dim or info.dim
    has_sparse = info.has_sparse_head and cfg.model.sparse is not False
    shape = costs.shape_of(read_model_json(info.path, "config.json"), cfg.model.name)
    mean_len = read_counts["tokens_sq"] / read_counts["tokens"] if read_counts["tokens"] else 0.0
    tokenize_s = sum(s.seconds for s in read)  # reading and tokenizing, in this one process

    report: dict[str, Any] = {
        "config": {"source": cfg.source.uri, "model": cfg.model.name, "mode": cfg.mode,
                   "milvus_mode": cfg.milvus.mode, "collection": cfg.milvus.collection},
        "source": {"shards": fig(len(shards), "measured"), "bytes": fig(sum(s.size for s in shards), "measured"),
                   "formats": dict(Counter(s.format for s in shards))},
        "sample": {
            "shards": len(read), "read_in_full": sum(1 for s in read if s.complete),
            "failed": [{"path": s.shard.path, "error": s.error} for s in read if s.error],
            "bytes_covered": round(sum(s.covered for s in read)), "text_bytes_read": read_counts["text_bytes"],
            "share_of_source_bytes": round(sum(s.covered for s in read) / max(1, sum(s.size for s in shards)), 4),
            "max_text_bytes_per_shard": sample_bytes, "docs_read": read_counts["docs"],
            "tokens": read_counts["tokens"],
        },
        "model": {"name": cfg.model.name, "dim": info.dim, "dense_dim": dim, "sparse": has_sparse,
                  "max_seq_length": info.max_seq_length, "window": tok.window, "overlap": cfg.chunking.overlap,
                  "long_docs": cfg.chunking.long_docs, "passage_prefix": tok.passage_prefix,
                  "params": shape.params if shape else None, "layers": shape.layers if shape else None,
                  "hidden": shape.hidden if shape else None},
        "run": _run_section(cfg, shards, changes),
        "to_process": _totals(todo_counts, todo_basis),
        "corpus": _totals(all_counts, all_basis),
        "compute": _compute(cfg, shape, mean_len, todo_counts, todo_basis, read_counts, tokenize_s),
        "storage": _storage(cfg, dim, has_sparse, all_counts, all_basis),
        "bulk_import": _bulk(cfg, dim, has_sparse, todo, todo_counts, todo_basis),
        "timing_s": {"list": round(list_s, 2), "manifest": round(manifest_s, 2), "sample": round(sample_s, 2),
                     "total": round(time.monotonic() - started, 2)},
    }
    return report


def _totals(counts: Counter[str], basis: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: fig(round(counts[k]), basis) for k in TOTALS}
    langs: dict[str, dict[str, Any]] = {}
    for key, value in counts.items():
        if key.startswith("lang:"):
            lang, what = key[5:].rsplit(":", 1)
            langs.setdefault(lang, {})[what] = round(value)
    out["languages"] = {k: {**v, "basis": basis} for k, v in sorted(langs.items(), key=lambda kv: -kv[1]["tokens"])}
    return out


def _run_section(cfg: JobConfig, shards: list[Any], changes: dict[str, Any]) -> dict[str, Any]:
    todo = changes["todo"]
    todo_paths = {s.path for s in todo}
    redone = [p for p in changes["changed"] + changes["unchanged"] + [b for _, b in changes["renamed"]]
              if p in todo_paths]
    return {
        "mode": cfg.mode, "manifest": changes["manifest"], "note": changes["note"],
        "documents_note": (f"{len(redone)} shard(s) to process hold documents embedded before (changed, renamed or "
                           "done again): the job skips those whose fingerprint is unchanged, the plan counts "
                           "whole shards, so its figures to process are an upper bound" if redone else ""),
        "shards_to_process": fig(len(todo), "measured"),
        "bytes_to_process": fig(sum(s.size for s in todo), "measured"),
        "shards_skipped": fig(len(shards) - len(todo), "measured"),
        "new": fig(len(changes["new"]), "measured"), "changed": fig(len(changes["changed"]), "measured"),
        "unchanged": fig(len(changes["unchanged"]), "measured"), "vanished": fig(len(changes["vanished"]), "measured"),
        "renamed": fig(len(changes["renamed"]), "measured",
                       examples=[{"from": a, "to": b} for a, b in changes["renamed"][:5]]),
    }


def _compute(cfg: JobConfig, shape: costs.Shape | None, mean_len: float, counts: Counter[str], basis: str,
             read: Counter[str], tokenize_s: float) -> dict[str, Any]:
    tokens = counts["tokens"]
    rows = costs.throughput(shape, mean_len) if shape else []
    gpus = cfg.cluster.workers * cfg.cluster.gpus_per_worker
    for r in rows:
        hours = tokens / r["tokens_per_s"] / 3600 if r["tokens_per_s"] else None
        r["tokens_per_s"] = round(r["tokens_per_s"])
        r["hours"] = fig(round(hours, 4) if hours is not None else None,
                         "assumed" if r["basis"] == "assumed" else basis)
        if gpus and not r["device"].startswith("CPU"):
            r["wall_hours_on_the_configured_gpus"] = round(hours / gpus, 4) if hours is not None else None
    tok_rate = read["tokens"] / tokenize_s if tokenize_s > 0 else None
    reference = {}
    for ref in (costs.BGE_M3, costs.E5_SMALL):  # the same tokens through other model sizes (same XLM-R vocabulary)
        reference[ref.name] = [{"device": t["device"], "tokens_per_s": round(t["tokens_per_s"]), "basis": t["basis"],
                                "hours": round(tokens / t["tokens_per_s"] / 3600, 4)}
                               for t in costs.throughput(ref, mean_len)]
    return {
        "tokens": fig(round(tokens), basis),
        "mean_chunk_tokens": fig(round(read["tokens"] / read["chunks"], 1) if read["chunks"] else 0, "extrapolated"),
        "attention_length": fig(round(mean_len, 1), "extrapolated"),
        "flops_per_token": fig(round(shape.flops_per_token(mean_len)) if shape else None, "assumed"),
        "mfu_assumed": costs.MFU[shape.size_class] if shape else None,
        "throughput": rows,
        "configured_gpus": gpus,
        "reference_sizes": reference,
        "tokenize": {"tokens_per_s_one_core": fig(round(tok_rate) if tok_rate else None, "measured",
                                                  note="tokens of the sample over the seconds spent reading and "
                                                       "tokenizing it in this process"),
                     "core_hours": fig(round(tokens / tok_rate / 3600, 4) if tok_rate else None, basis)},
    }


def _storage(cfg: JobConfig, dim: int, has_sparse: bool, counts: Counter[str], basis: str) -> dict[str, Any]:
    chunks = counts["chunks"]
    configured = getattr(cfg.milvus, "dense_type", "float32")
    dense = {}
    for kind, per in costs.dense_bytes(dim).items():
        memory = costs.index_memory(chunks, per)
        dense[kind] = {"bytes_per_vector": per, "bytes": fig(round(chunks * per), basis),
                       "hnsw_memory": fig(round(memory["HNSW"]), "assumed"),
                       "ivf_flat_memory": fig(round(memory["IVF_FLAT"]), "assumed"),
                       "configured": kind == configured}
    sparse = None
    if has_sparse:
        nnz = counts["sparse_nnz"]
        sparse = {"nonzeros_per_chunk": fig(round(nnz / chunks, 1) if chunks else 0, "assumed",
                                            note="upper bound: distinct token ids per chunk, capped by sparse_top_k"),
                  "bytes": fig(round(nnz * costs.SPARSE_NONZERO_BYTES), "assumed")}
    scalars = counts["pk_bytes"] + counts["doc_id_bytes"] + 4 * chunks + counts["fp_bytes"] + counts["metadata_bytes"]
    return {
        "vectors": fig(round(chunks), basis), "dense_dim": dim, "dense_type": configured, "dense": dense,
        "sparse": sparse,
        "text": fig(round(counts["chunk_text_bytes"]) if cfg.milvus.store_text else 0, basis),
        "scalars": fig(round(scalars), basis, note="pk, doc_id, chunk_index, embed_fp and the metadata columns"),
    }


def _bulk(cfg: JobConfig, dim: int, has_sparse: bool, todo: list[Any], counts: Counter[str],
          basis: str) -> dict[str, Any] | None:
    if cfg.milvus.mode != "bulk_import":
        return None
    chunks = counts["chunks"]
    if not chunks:
        return {"groups": fig(0, basis), "files": fig(0, basis), "jobs": fig(0, basis)}
    # one import row: the scalar columns as arrow strings (+4 bytes offset each), the dense list<float32>,
    # the sparse JSON string (about 24 characters per nonzero)
    row = ((counts["pk_bytes"] + counts["doc_id_bytes"] + counts["fp_bytes"] + counts["metadata_bytes"]
            + (counts["chunk_text_bytes"] if cfg.milvus.store_text else 0)) / chunks + 16 + 4 * dim + 4
           + (24 * counts["sparse_nnz"] / chunks + 30 if has_sparse else 0))
    out = costs.import_files(chunks, row, len(todo), group_shards=cfg.milvus.import_group_shards,
                             file_mb=cfg.milvus.import_file_mb, writers=cfg.cluster.writer_count,
                             rows_per_task=cfg.cluster.rows_per_task)
    return {"groups": fig(out["groups"], "measured"), "files": fig(out["files"], "assumed"),
            "jobs": fig(out["jobs"], "assumed"), "bytes": fig(round(out["bytes"]), "assumed"),
            "row_bytes": round(row), "group_shards": cfg.milvus.import_group_shards,
            "file_mb": cfg.milvus.import_file_mb, "writers": cfg.cluster.writer_count}


# ---- the table ----------------------------------------------------------------------------------------
def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:,.2f}"
    return f"{round(value):,}"


def _b(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:,.2f} {unit}"
    return f"{value:,.0f} B"


def _h(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.1:
        return f"{value:,.2f} h"
    return f"{value * 3600:,.1f} s" if value * 3600 >= 10 else f"{value * 3600:.2f} s"


def render(r: dict[str, Any]) -> str:
    """The plan as a readable table; the last column says how each figure is known."""
    lines: list[str] = []

    def row(name: str, *values: str, basis: str = "") -> None:
        cells = "".join(f"{v:>16}" for v in values)
        lines.append(f"  {name:<34}{cells}  {basis}".rstrip())

    def head(title: str, *columns: str) -> None:
        lines.append("")
        lines.append(f"{title:<36}{''.join(f'{c:>16}' for c in columns)}".rstrip())

    src, smp, run, mdl = r["source"], r["sample"], r["run"], r["model"]
    lines.append(f"jobs.plan: {r['config']['source']} -> {r['config']['collection']} "
                 f"(mode {r['config']['mode']}, milvus.mode {r['config']['milvus_mode']})")
    params = f"{mdl['params'] / 1e6:.0f}M parameters, " if mdl["params"] else ""
    cut = f"dim {mdl['dim']}" + (f" cut to {mdl['dense_dim']}" if mdl["dense_dim"] != mdl["dim"] else "")
    lines.append(f"model {mdl['name']}: {params}{cut}, {'dense + sparse' if mdl['sparse'] else 'dense only'}; "
                 f"windows of {mdl['window']} tokens, overlap {mdl['overlap']}, long_docs {mdl['long_docs']}, "
                 f"prefix {mdl['passage_prefix']!r}")

    head("source", "", "basis")
    row("shards", _n(src["shards"]["value"]), basis="measured (listing)")
    row("bytes", _b(src["bytes"]["value"]), basis="measured (listing)")
    lines.append(f"  sample: {smp['shards']} shard(s) read, {smp['read_in_full']} in full: "
                 f"{_b(smp['bytes_covered'])} of the files ({smp['share_of_source_bytes']:.1%}), "
                 f"{_b(smp['text_bytes_read'])} of text, {smp['docs_read']:,} docs, {smp['tokens']:,} tokens")
    for failed in smp["failed"][:3]:
        lines.append(f"  unreadable (the job rejects it too): {failed['error']}")

    head(f"what the run does ({run['note']})")
    where = "measured (manifest)" if run["manifest"] else "measured (no manifest)"
    row("shards new / changed / unchanged",
        f"{run['new']['value']:,} / {run['changed']['value']:,} / {run['unchanged']['value']:,}", basis=where)
    row("shards vanished / renamed", f"{run['vanished']['value']:,} / {run['renamed']['value']:,}", basis=where)
    row("shards to process", _n(run["shards_to_process"]["value"]), basis="measured")
    row("bytes to process", _b(run["bytes_to_process"]["value"]), basis="measured")
    if run["documents_note"]:
        lines.append(f"  ({run['documents_note']})")

    head("", "to process", "whole corpus", "basis")
    names = {"docs": "documents", "docs_rejected": "documents rejected", "chunks": "chunks", "tokens": "tokens"}
    for key in TOTALS:
        row(names[key], _n(r["to_process"][key]["value"]), _n(r["corpus"][key]["value"]),
            basis=r["to_process"][key]["basis"])
    langs = r["to_process"]["languages"]
    if langs:
        head("per language (to process)", "docs", "chunks", "tokens", "share")
        all_tokens = sum(v.get("tokens", 0) for v in langs.values()) or 1
        for lang, v in langs.items():
            row(lang, _n(v.get("docs", 0)), _n(v.get("chunks", 0)), _n(v.get("tokens", 0)),
                f"{v.get('tokens', 0) / all_tokens:.1%}", basis=v["basis"])

    comp = r["compute"]
    flops = comp["flops_per_token"]["value"]
    head(f"compute for {_n(comp['tokens']['value'])} tokens", "tokens/s", "hours", "basis")
    lines.append(f"  ({flops / 1e6:,.1f} MFLOPs per token: 2 per layer weight, plus attention at "
                 f"{comp['attention_length']['value']:g} positions; mean chunk {comp['mean_chunk_tokens']['value']:g} "
                 "tokens)" if flops else "  (the model's config.json does not give its shape)")
    for t in comp["throughput"]:
        basis = f"measured rate: {t['how']}" if t["basis"] == "measured" else f"assumed: {t['how']}"
        row(t["device"][:34], _n(t["tokens_per_s"]), _h(t["hours"]["value"]), basis=basis)
    tz = comp["tokenize"]
    row("read + tokenize, 1 process here", _n(tz["tokens_per_s_one_core"]["value"]), _h(tz["core_hours"]["value"]),
        basis="measured rate (this sample, this machine)")
    for name, rows in comp["reference_sizes"].items():
        lines.append(f"  same tokens, {name}: " + ", ".join(
            f"{t['device'].split(':')[0]} {_h(t['hours'])}" + ("" if t["basis"] == "assumed" else " (measured rate)")
            for t in rows) + " (assumed)")
    if comp["configured_gpus"]:
        lines.append(f"  the config asks for {comp['configured_gpus']:g} GPU(s): wall-clock hours are about the "
                     "GPU-hours divided by that")

    st = r["storage"]
    head(f"storage after the run: {_n(st['vectors']['value'])} vectors ({st['vectors']['basis']})",
         "vectors", "HNSW memory", "IVF_FLAT memory")
    for kind, d in st["dense"].items():
        label = f"{kind} x {st['dense_dim']}" + ("  (configured)" if d["configured"] else "")
        row(label, _b(d["bytes"]["value"]), _b(d["hnsw_memory"]["value"]), _b(d["ivf_flat_memory"]["value"]))
    lines.append(f"  (vectors: {st['vectors']['basis']}; index memory assumed: HNSW M={costs.HNSW_M} keeps the "
                 f"vectors and {costs.HNSW_M * 8} B of links each, IVF_FLAT the vectors and an 8 B id each)")
    if st["sparse"]:
        row("sparse (upper bound)", _b(st["sparse"]["bytes"]["value"]),
            basis=f"assumed: {st['sparse']['nonzeros_per_chunk']['value']:g} distinct token ids per chunk x 8 B")
    row("text" + ("" if r["storage"]["text"]["value"] else " (milvus.store_text off)"), _b(st["text"]["value"]),
        basis=st["text"]["basis"])
    row("scalar fields", _b(st["scalars"]["value"]),
        basis=f"{st['scalars']['basis']}: pk, doc_id, chunk_index, embed_fp, metadata")

    if r["bulk_import"]:
        b = r["bulk_import"]
        head(f"bulk import ({b['group_shards']} shards per group, files rolled at {b['file_mb']} MiB, "
             f"{b['writers']} writer(s))")
        row("import groups", _n(b["groups"]["value"]), basis=b["groups"]["basis"])
        row("import files", _n(b["files"]["value"]), basis="assumed: each writer writes its own files of a group")
        row("import jobs (<= 1024 files each)", _n(b["jobs"]["value"]), basis=b["jobs"]["basis"])
        row("import bytes", _b(b["bytes"]["value"]), basis=f"assumed: about {b['row_bytes']:,} B per row")
    t = r["timing_s"]
    lines.append("")
    lines.append(f"planned in {t['total']:.1f} s (listing {t['list']:.1f} s, manifest {t['manifest']:.1f} s, "
                 f"sample {t['sample']:.1f} s); measured: counted here; extrapolated: from the sample, by bytes; "
                 "assumed: jobs/costs.py")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    cfg = config_or_none(args.config, args.overrides, log)
    if cfg is None:
        return EXIT_INVALID
    from cluster.manifest import ManifestCorrupt, StoreUnreachable
    from cluster.source import SourceError

    try:
        report = estimate(cfg, sample_shards=args.sample_shards, sample_bytes=args.sample_bytes,
                          workers=args.workers)
    except (SourceError, ValueError, FileNotFoundError, ManifestCorrupt, StoreUnreachable) as e:
        log.error("cannot plan: %s", e)
        return EXIT_INVALID
    print(json.dumps(report, indent=1) if args.json else render(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
