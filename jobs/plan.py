"""``python -m jobs.plan --config FILE [--set key=value ...] [--json]``: what a run would cost, before it runs.

Lists the source as the job does, reads a bounded sample of it with the job's readers, tokenizes
the sample with the job's tokenizer and chunking, and extrapolates by bytes: documents, chunks,
tokens (in all and per language), what an incremental run would do per shard (from the manifest,
read-only) and per document (the sampled documents' fingerprints against the shards' id files),
GPU-hours per GPU kind, vector and index storage, bulk-import files, and with --audit the recall
a jobs.evaluate audit measured for the configured dimension and dense type. Every figure is
labelled measured, extrapolated (from the sample) or assumed (jobs/costs.py). No Ray, no Milvus,
no model loaded (its files are hashed once for the fingerprints, as the job does), nothing written.
Exit codes: 0 done; 2 invalid config or audit file, or a source that cannot be listed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
    p.add_argument("--audit", metavar="FILE",
                   help="a python -m jobs.evaluate --json report: print the recall it measured for the configured "
                        "dimension and milvus.dense_type")
    p.add_argument("--no-fingerprints", dest="fingerprints", action="store_false",
                   help="skip the per-document estimate (and the hashing of the model's files it needs)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def fig(value: Any, basis: str, **extra: Any) -> dict[str, Any]:
    """One figure and how it is known: measured, extrapolated (from the sample) or assumed."""
    return {"value": value, "basis": basis, **extra}


def estimate(cfg: JobConfig, *, sample_shards: int = DEFAULT_SAMPLE_SHARDS,
             sample_bytes: int = DEFAULT_SAMPLE_BYTES, workers: int = 1, audit: str | None = None,
             fingerprints: bool = True) -> dict[str, Any]:
    """Every figure of the plan as one JSON-able dict.

    Args:
        audit: A ``jobs.evaluate --json`` report to take the configured row's recall from.
        fingerprints: Estimate per document (hashes the model's files when a shard to process has an id file).

    Raises:
        SourceError: The source cannot be listed.
        ValueError / FileNotFoundError: The model folder, the settings or the audit file are not usable.
    """
    from cluster.source import list_shards
    from cluster.stages.tokenize import get_tokenizer
    from embedder.models.info import load_model_info, read_model_json
    from jobs.estimate import Extrapolation, shard_changes
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
    dim = cfg.model.dense_dim or info.dim
    has_sparse = info.has_sparse_head and cfg.model.sparse is not False
    id_files: dict[str, str] = changes["id_files"]
    # The shards to process with an id file (their documents are compared with it) and the others are
    # sampled apart, so that a stratum never mixes them; then, with what the budget leaves, the shards not
    # to process (for the figures of the whole corpus).
    compared = [s for s in todo if s.path in id_files]
    plain = [s for s in todo if s.path not in id_files]
    todo_paths = {s.path for s in todo}
    rest = [s for s in shards if s.path not in todo_paths]
    pool, strata = _draw(sample_shards, [compared, plain], rest)
    hashed = None
    vector_fp = None
    if fingerprints and compared:  # what the job hashes at start: needed to compute the same fingerprints
        hashed, vector_fp = _vector_fingerprint(cfg, info, dim, has_sparse)
    t0 = time.monotonic()
    chosen = [m[0] for m in strata]

    def read(idx: list[int]) -> list[Any]:
        return read_sample([pool[i] for i in idx], cfg, sample_bytes, workers,
                           [vector_fp if pool[i].path in id_files else None for i in idx])

    picked = dict(zip(chosen, read(chosen)))
    retry = [m[1] for m in strata if len(m) > 1 and picked[m[0]].error is not None]  # its stratum needs a reading
    picked.update(zip(retry, read(retry)))
    sample_s = time.monotonic() - t0
    t0 = time.monotonic()
    docs_section = _documents(cfg, changes, compared, plain, picked, hashed, vector_fp, fingerprints)
    compare_s = time.monotonic() - t0
    ex = Extrapolation(pool, strata, picked)
    todo_counts, todo_basis = ex.totals(todo)
    all_counts, all_basis = ex.totals(shards)
    _document_figures(docs_section, ex, compared, todo_counts, todo_basis)
    samples = list(picked.values())
    read_counts: Counter[str] = sum((s.counts for s in samples), Counter())
    shape = costs.shape_of(read_model_json(info.path, "config.json"), cfg.model.name)
    mean_len = read_counts["tokens_sq"] / read_counts["tokens"] if read_counts["tokens"] else 0.0
    tokenize_s = sum(s.seconds for s in samples)  # reading and tokenizing, in this one process
    to_embed = docs_section["tokens_to_embed"]

    report: dict[str, Any] = {
        "config": {"source": cfg.source.uri, "model": cfg.model.name, "mode": cfg.mode,
                   "milvus_mode": cfg.milvus.mode, "collection": cfg.milvus.collection},
        "source": {"shards": fig(len(shards), "measured"), "bytes": fig(sum(s.size for s in shards), "measured"),
                   "formats": dict(Counter(s.format for s in shards))},
        "sample": {
            "shards": len(samples), "read_in_full": sum(1 for s in samples if s.complete),
            "failed": [{"path": s.shard.path, "error": s.error} for s in samples if s.error],
            "bytes_covered": round(sum(s.covered for s in samples)), "text_bytes_read": read_counts["text_bytes"],
            "share_of_source_bytes": round(sum(s.covered for s in samples) / max(1, sum(s.size for s in shards)),
                                           4),
            "max_text_bytes_per_shard": sample_bytes, "docs_read": read_counts["docs"],
            "tokens": read_counts["tokens"],
        },
        "model": {"name": cfg.model.name, "dim": info.dim, "dense_dim": dim, "sparse": has_sparse,
                  "max_seq_length": info.max_seq_length, "window": tok.window, "overlap": cfg.chunking.overlap,
                  "long_docs": cfg.chunking.long_docs, "passage_prefix": tok.passage_prefix,
                  "params": shape.params if shape else None, "layers": shape.layers if shape else None,
                  "hidden": shape.hidden if shape else None},
        "run": _run_section(cfg, shards, changes, docs_section["estimated"]),
        "documents": docs_section,
        "to_process": _totals(todo_counts, todo_basis),
        "corpus": _totals(all_counts, all_basis),
        "compute": _compute(cfg, shape, mean_len, to_embed, todo_counts["tokens"], read_counts, tokenize_s),
        "storage": _storage(cfg, dim, has_sparse, all_counts, all_basis),
        "bulk_import": _bulk(cfg, dim, has_sparse, todo, todo_counts, todo_basis),
        "audit": _audit(audit, cfg, info.dim, dim) if audit else None,
        "timing_s": {"list": round(list_s, 2), "manifest": round(manifest_s, 2),
                     "model_hash": round(hashed["seconds"], 2) if hashed else 0.0, "sample": round(sample_s, 2),
                     "compare": round(compare_s, 2), "total": round(time.monotonic() - started, 2)},
    }
    return report


def _draw(k: int, todo_groups: list[list[Any]], rest: list[Any]) -> tuple[list[Any], list[list[int]]]:
    """The shards in one list and the strata of the sample over it (indices): the groups of shards to process
    share ``k`` by bytes (each stratified by :func:`jobs.estimate.choose_sample`), the rest gets what is left."""
    from jobs.estimate import choose_sample, split_budget

    pool: list[Any] = []
    strata: list[list[int]] = []
    quota = split_budget([(len(g), sum(s.size for s in g)) for g in todo_groups], k)
    for group, q in zip(todo_groups, quota):
        if group and q:
            strata += [[i + len(pool) for i in m] for m in choose_sample(group, q)]
        pool += group
    if len(strata) < k and rest:
        strata += [[i + len(pool) for i in m] for m in choose_sample(rest, k - len(strata))]
    return pool + rest, strata


def _vector_fingerprint(cfg: JobConfig, info: Any, dim: int, has_sparse: bool) -> tuple[dict[str, Any], str]:
    """The run's vector fingerprint, computed as :func:`cluster.plan.plan` does (the model's files hashed), and
    what hashing them cost."""
    from pathlib import Path

    from embedder.models.fingerprint import model_fingerprint, vector_fingerprint

    t0 = time.monotonic()
    model_fp = model_fingerprint(cfg.model, info.path)
    seconds = time.monotonic() - t0
    vector_fp = vector_fingerprint(cfg.model, cfg.chunking, model_fp=model_fp, dense_dim=dim, sparse=has_sparse,
                                   passage_prompt=info.passage_prompt, max_seq_length=info.max_seq_length)
    folder = Path(info.path)
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
    return ({"model": model_fp, "seconds": seconds, "files": len(files) or None,
             "bytes": sum(p.stat().st_size for p in files) or None,
             "how": "every byte of the model's files" if files else "the objects' keys, sizes and ETags (s3://)"},
            vector_fp)


def _documents(cfg: JobConfig, changes: dict[str, Any], compared: list[Any], plain: list[Any],
               picked: dict[int, Any], hashed: dict[str, Any] | None, vector_fp: str | None,
               fingerprints: bool) -> dict[str, Any]:
    """Compare the sampled documents of shards with an id file with it (:func:`jobs.estimate.compare_docs`), count
    those of the other shards to process as new; the counts go into each sample's counts for the extrapolation."""
    from cluster.manifest.ids import read_ids
    from jobs.estimate import all_new, compare_docs, from_id_file

    id_files: dict[str, str] = changes["id_files"]
    store = changes["store"]
    sampled_docs = sampled_shards = sampled_unchanged = sampled_new = 0
    missing = []
    for sample in picked.values():
        if sample.error is not None:
            continue
        path = sample.shard.path
        if path in id_files and sample.docs is not None:
            try:
                ids = read_ids(store.fs, store.path(id_files[path]))
            except FileNotFoundError:  # as the read task: its documents count as new
                missing.append(id_files[path])
                sample.counts.update(all_new(sample.counts))
                continue
            found = compare_docs(sample.docs, ids)
            sample.counts.update(found)
            if not sample.complete:  # the recorded documents' figures: the id file's totals, the sample's shares
                sample.whole.update(from_id_file(found, ids))
            sampled_docs += found["docs_compared"]
            sampled_unchanged += found["docs_unchanged"]
            sampled_new += found["docs_new"]
            sampled_shards += 1
        elif path not in id_files:
            sample.counts.update(all_new(sample.counts))
    renamed_to = {b for _, b in changes["renamed"]}
    notes = []
    if compared and not fingerprints:
        notes.append("--no-fingerprints: documents of shards with an id file are not compared; the figures to "
                     "process count every document (an upper bound)")
    elif compared and not sampled_shards:
        notes.append(f"none of the {len(compared)} shard(s) with an id file was read by the sample: their documents "
                     "are not compared; the figures to process count every document (an upper bound)")
    if missing:
        notes.append(f"{len(missing)} id file(s) are gone (e.g. {missing[0]}): as in the job, their shard's "
                     "documents count as new")
    # cluster.plan: the id files are trusted in incremental mode unless the previous run stopped half-way
    trusted = cfg.mode == "incremental" and not changes["open_run"]
    if compared and not trusted:
        why = f"run {changes['open_run']} did not finish" if changes["open_run"] else "mode full"
        notes.append(f"{why}: the job skips a document only once the collection confirms its fingerprint (nothing "
                     "if the collection is new); the plan takes the id files' word, so the documents skipped are "
                     "an upper bound")
    if any(s.path in renamed_to for s in compared):
        notes.append("renamed shards: compared with the id file of the vanished record they pair with; the job "
                     "finds those documents in the collection, by key")
    if changes["manifest"] and (plain or sampled_new):
        which = [f"every document of the {len(plain)} shard(s) to process without an id file"] if plain else []
        which += [f"{sampled_new:,} sampled document(s) not in their shard's id file"] if sampled_new else []
        notes.append(f"new: {' and '.join(which)}. The job looks such documents up in the collection, so those "
                     "moved from another shard are skipped; the plan does not connect to Milvus: not estimated")
    share = sampled_unchanged / sampled_docs if sampled_docs else None
    return {"estimated": bool(sampled_shards), "id_files_trusted": trusted, "vector_fingerprint": vector_fp,
            "model_hash": hashed,
            "shards_compared": len(compared), "shards_all_new": len(plain), "sampled_shards": sampled_shards,
            "sampled_docs": sampled_docs,
            "sampled_share_unchanged": round(share, 4) if share is not None else None,
            # a share measured on n documents drawn from many is off by about this (one standard error)
            "share_stderr": round(math.sqrt(share * (1 - share) / sampled_docs), 4) if share is not None else None,
            "notes": notes}


def _document_figures(section: dict[str, Any], ex: Any, compared: list[Any], todo_counts: Counter[str],
                      todo_basis: str) -> None:
    """The per-document figures of the shards to process: skipped (estimated from fingerprints) and embedded."""
    if not section["estimated"]:
        section.update({k: fig(None, "not estimated") for k in ("docs_unchanged", "chunks_unchanged",
                                                                  "tokens_skipped")})
        for kind in ("changed", "new", "unknown"):
            section[f"docs_{kind}"] = fig(None, "not estimated")
        section["docs_to_embed"] = fig(round(todo_counts["docs_embedded"]), todo_basis)
        section["tokens_to_embed"] = fig(round(todo_counts["tokens"]), todo_basis)
        section["basis"] = "not estimated: every document of the shards to process counts (an upper bound)"
        return
    _, compared_basis = ex.totals(compared)
    how = (f"{'measured' if compared_basis == 'measured' else 'extrapolated'} from the fingerprints of "
           f"{section['sampled_docs']:,} sampled document(s) in {section['sampled_shards']} shard(s)")
    section["basis"] = f"estimated from fingerprints of {section['sampled_docs']:,} sampled documents"
    section["docs_unchanged"] = fig(round(todo_counts["docs_unchanged"]), how)
    section["chunks_unchanged"] = fig(round(todo_counts["chunks_unchanged"]), how)
    section["tokens_skipped"] = fig(round(todo_counts["tokens_unchanged"]), how)
    for kind in ("changed", "new", "unknown"):
        section[f"docs_{kind}"] = fig(round(todo_counts[f"docs_{kind}"]), how if kind != "new" else todo_basis)
    kinds = ("changed", "new", "unknown")
    section["docs_to_embed"] = fig(round(sum(todo_counts[f"docs_{k}"] for k in kinds)), how)
    section["tokens_to_embed"] = fig(round(sum(todo_counts[f"tokens_{k}"] for k in kinds)), how)


def _totals(counts: Counter[str], basis: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: fig(round(counts[k]), basis) for k in TOTALS}
    langs: dict[str, dict[str, Any]] = {}
    for key, value in counts.items():
        if key.startswith("lang:"):
            lang, what = key[5:].rsplit(":", 1)
            langs.setdefault(lang, {})[what] = round(value)
    out["languages"] = {k: {**v, "basis": basis} for k, v in sorted(langs.items(), key=lambda kv: -kv[1]["tokens"])}
    return out


def _run_section(cfg: JobConfig, shards: list[Any], changes: dict[str, Any], estimated: bool) -> dict[str, Any]:
    todo = changes["todo"]
    todo_paths = {s.path for s in todo}
    redone = [p for p in changes["changed"] + changes["unchanged"] + [b for _, b in changes["renamed"]]
              if p in todo_paths]
    note = ""
    if redone:
        note = (f"{len(redone)} shard(s) to process hold documents embedded before (changed, renamed or done "
                "again): the job skips those whose fingerprint is unchanged; the figures to process count whole "
                "shards, " + ("the documents below estimate what is skipped" if estimated
                              else "an upper bound"))
    return {
        "mode": cfg.mode, "manifest": changes["manifest"], "note": changes["note"], "open_run": changes["open_run"],
        "documents_note": note,
        "shards_to_process": fig(len(todo), "measured"),
        "bytes_to_process": fig(sum(s.size for s in todo), "measured"),
        "shards_skipped": fig(len(shards) - len(todo), "measured"),
        "new": fig(len(changes["new"]), "measured"), "changed": fig(len(changes["changed"]), "measured"),
        "unchanged": fig(len(changes["unchanged"]), "measured"), "vanished": fig(len(changes["vanished"]), "measured"),
        "renamed": fig(len(changes["renamed"]), "measured",
                       examples=[{"from": a, "to": b} for a, b in changes["renamed"][:5]]),
    }


def _compute(cfg: JobConfig, shape: costs.Shape | None, mean_len: float, to_embed: dict[str, Any],
             to_process: float, read: Counter[str], tokenize_s: float) -> dict[str, Any]:
    """Hours for the tokens the run embeds (``to_embed``: those of the shards to process less the documents
    skipped as unchanged, where estimated); reading and tokenizing covers every token of the shards to process."""
    tokens, basis = to_embed["value"], to_embed["basis"]
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
        "tokens": fig(round(tokens), basis), "tokens_read": round(to_process),
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
                     "core_hours": fig(round(to_process / tok_rate / 3600, 4) if tok_rate else None, basis)},
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


METRICS = ("recall@1", "recall@10", "mrr@10")


def _model_name(name: str) -> str:
    """The last part of a model's folder, hub id or s3:// prefix (a report may name the folder another way)."""
    return name.rstrip("/").rsplit("/", 1)[-1]


def _audit(path: str, cfg: JobConfig, full_dim: int, dim: int) -> dict[str, Any]:
    """The row of a ``jobs.evaluate --json`` report for the configured dimension and ``milvus.dense_type``: its
    recall@1, recall@10 and MRR@10 and its recall@10 drop against float32 at the full dimension.

    The storage audit's rows (``storage``: dimension x type) are used; a report without them (an older
    jobs.evaluate) still answers for float32 from its Matryoshka rows.

    Raises:
        ValueError: The file cannot be read or is not such a report.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"--audit {path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("storage", []), list) or not (
            "storage" in data or "matryoshka" in data):
        raise ValueError(f"--audit {path}: not a python -m jobs.evaluate --json report (no storage rows)")
    dense_type = getattr(cfg.milvus, "dense_type", "float32")
    audit_full = data.get("full_dim")
    langs = data.get("languages") or []
    out: dict[str, Any] = {
        "file": path, "model": data.get("model"), "dim": dim, "type": dense_type, "found": False,
        "scope": "cross-lingual" if len(langs) > 1 else "all pairs", "languages": len(langs),
        "items": data.get("items"), "full_dim": audit_full, "basis": "measured (jobs.evaluate)", "notes": []}
    if data.get("model") and _model_name(str(data["model"])) != _model_name(cfg.model.name):
        out["notes"].append(f"the audit is of model {data['model']}, the config's is {cfg.model.name}")
    if audit_full is not None and audit_full != full_dim:
        out["notes"].append(f"the audit's model has {audit_full} dimensions, the config's {full_dim}")
    rows = [r for r in data.get("storage") or [] if isinstance(r, dict)]
    row = next((r for r in rows if r.get("dim") == dim and r.get("type") == dense_type), None)
    ref = next((r for r in rows if r.get("type") == "float32" and r.get("dim") == (audit_full or full_dim)), None)
    source = "storage audit"
    if row is None and not rows and dense_type == "float32":  # an older report: the Matryoshka rows are float32
        def headline(r: dict[str, Any]) -> dict[str, Any]:
            avg = r.get("cross_lingual") or r.get("all") or {}
            return {**avg.get("dense", {}), "recall@10_drop": r.get("recall@10_drop")}

        found = [r for r in data.get("matryoshka") or [] if r.get("dim") == dim]
        full = [r for r in data.get("matryoshka") or [] if r.get("dim") == (audit_full or full_dim)]
        row = headline(found[0]) if found else None
        ref = headline(full[0]) if full else None
        source = "Matryoshka audit (float32)"
    if row is None:
        have = sorted({(r.get("dim"), r.get("type")) for r in rows}, key=lambda x: (-(x[0] or 0), str(x[1])))
        out["notes"].append(f"the audit has no row for dimension {dim} x {dense_type}"
                            + (f" (it has {', '.join(f'{d} x {t}' for d, t in have[:8])})" if have else "")
                            + ": run python -m jobs.evaluate with this config")
        return out
    out.update({"found": True, "source": source, **{m: row.get(m) for m in METRICS}})
    drop = row.get("recall@10_drop")
    if ref is not None and ref.get("recall@10") is not None and row.get("recall@10") is not None:
        drop = float(ref["recall@10"]) - float(row["recall@10"])
    out["recall@10_drop"] = round(drop, 4) if drop is not None else None
    out["reference"] = {"dim": audit_full or full_dim, "type": "float32",
                        "recall@10": ref.get("recall@10") if ref else None}
    return out


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
    _render_documents(r["documents"], lines, row, head)

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
    skipped = comp["tokens_read"] - comp["tokens"]["value"]
    head(f"compute for {_n(comp['tokens']['value'])} tokens" + (" to embed" if skipped > 0 else ""),
         "tokens/s", "hours", "basis")
    if skipped > 0:
        lines.append(f"  ({_n(comp['tokens_read'])} tokens in the shards to process, less {_n(skipped)} of "
                     f"documents skipped as unchanged, {comp['tokens']['basis'].split(' from ')[0]} from their "
                     "fingerprints)")
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
    _render_audit(r.get("audit"), lines)
    t = r["timing_s"]
    lines.append("")
    hashing = f", model files hashed {t['model_hash']:.1f} s" if t.get("model_hash") else ""
    lines.append(f"planned in {t['total']:.1f} s (listing {t['list']:.1f} s, manifest {t['manifest']:.1f} s"
                 f"{hashing}, sample {t['sample']:.1f} s); measured: counted here; extrapolated: from the sample, by "
                 "bytes; assumed: jobs/costs.py")
    return "\n".join(lines)


def _render_documents(d: dict[str, Any], lines: list[str], row: Any, head: Any) -> None:
    if not d["shards_compared"] and not d["notes"]:
        return
    head(f"documents of the shards to process ({d['basis']})")
    if d["estimated"]:
        how = d["docs_unchanged"]["basis"].split(" from ")[0] + " (fingerprints)"
        row("documents skipped (unchanged)", _n(d["docs_unchanged"]["value"]), basis=how)
        row("documents changed / new / unknown",
            f"{_n(d['docs_changed']['value'])} / {_n(d['docs_new']['value'])} / {_n(d['docs_unknown']['value'])}",
            basis=how)
        if d["docs_unknown"]["value"]:
            lines.append("  (unknown: recorded by a version without fingerprints; the job asks the collection, the "
                         "plan counts them as embedded)")
        row("documents to embed", _n(d["docs_to_embed"]["value"]), basis=how)
        row("chunks / tokens skipped", f"{_n(d['chunks_unchanged']['value'])} / {_n(d['tokens_skipped']['value'])}",
            basis=how)
        row("tokens to embed", _n(d["tokens_to_embed"]["value"]), basis=how)
        lines.append(f"  ({d['sampled_share_unchanged']:.1%} of the {d['sampled_docs']:,} sampled documents with a "
                     f"record are unchanged" + (f", +/- {d['share_stderr']:.1%} at one standard error"
                                                 if d["docs_unchanged"]["basis"].startswith("extrapolated") else "")
                     + ")")
    h = d["model_hash"]
    if h:
        size = f"{_b(h['bytes'])} in {h['files']} file(s)" if h["bytes"] else "the model's objects"
        lines.append(f"  model fingerprint {h['model']}: {size} read in {h['seconds']:.1f} s ({h['how']}; the job "
                     "does the same once at start)")
    for note in d["notes"]:
        lines.append(f"  ({note})")


def _render_audit(a: dict[str, Any] | None, lines: list[str]) -> None:
    if a is None:
        return
    lines.append("")
    lines.append(f"retrieval quality of {a['dim']} x {a['type']} (the configured dimension and milvus.dense_type), "
                 f"from {a['file']}")
    if a["found"]:
        lines.append(f"  {a['scope']} recall@1 {a['recall@1']:.3f}, recall@10 {a['recall@10']:.3f}, "
                     f"MRR@10 {a['mrr@10']:.3f}; recall@10 drop against float32 x {a['reference']['dim']}: "
                     f"{a['recall@10_drop']:+.3f}  (measured by jobs.evaluate's {a['source']}: "
                     f"{a['items']} items in {a['languages']} languages)")
    for note in a["notes"]:
        lines.append(f"  ({note})")


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
                          workers=args.workers, audit=args.audit, fingerprints=args.fingerprints)
    except (SourceError, ValueError, FileNotFoundError, ManifestCorrupt, StoreUnreachable) as e:
        log.error("cannot plan: %s", e)
        return EXIT_INVALID
    print(json.dumps(report, indent=1) if args.json else render(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
