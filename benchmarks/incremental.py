"""Incremental cost: what a nightly run embeds after a small change, and that its result equals a fresh build.

Builds a corpus of ``--shards`` parquet shards (``--docs`` documents each; the sample corpus'
multilingual texts, each made unique), runs the job on it (``mode: incremental``,
``delete_missing``), then changes the source the way a nightly export does:

* edits 1% of the documents, spread over every shard;
* renames 10% of the shards (a new path: their documents must be found, not embedded again);
* deletes 1% of the documents;

runs the job again, and prints the tokens it embedded against the full run's (the issue's goal:
at most 2%). Then it runs the job from scratch over the new source into another collection and
checks that both collections are equal: the same primary keys, the same texts and fingerprints,
dense vectors equal within fp tolerance, nothing stale.

    python benchmarks/incremental.py [--shards 20] [--docs 100] [--keep DIR]

Each run is ``python -m jobs.embed`` in a subprocess (its own local Ray and milvus-lite), with the
offline multilingual-e5-small of ``make model`` (fp32, dense 384).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL = ROOT / ".cache/models/multilingual-e5-small"


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({os.cpu_count()} cores; {' '.join(wanted) or 'no avx2'})"


def base_texts() -> list[tuple[str, str]]:
    """Short texts (titles, and each body's first sentence) in 10 languages: a run here takes minutes, not hours."""
    from sample.corpus import documents

    out = []
    for d in documents():
        if d.kind == "handbook":
            continue
        first = d.text.replace("。", ". ").replace("।", ". ").split(". ")[0]
        out.append((d.lang, first[:300]))
    return out


def write_corpus(folder: Path, shards: int, docs: int) -> dict[str, list[dict[str, str]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = base_texts()
    folder.mkdir(parents=True)
    corpus = {}
    for s in range(shards):
        rows = []
        for d in range(docs):
            lang, text = texts[(s * docs + d) % len(texts)]
            rows.append({"id": f"s{s:03d}-d{d:04d}", "lang": lang, "text": f"{text} (#{s}.{d})"})
        corpus[f"part-{s:03d}.parquet"] = rows
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{s:03d}.parquet")
    return corpus


def change(folder: Path, corpus: dict[str, list[dict[str, str]]], seed: int = 7) -> dict[str, int]:
    """Edit 1% of the documents (over every shard), rename 10% of the shards, delete 1% of the documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    total = sum(len(rows) for rows in corpus.values())
    names = sorted(corpus)
    edits, deletes = max(1, total // 100), max(1, total // 100)
    for k in range(edits):  # round-robin over the shards: every shard gets its share
        rows = corpus[names[k % len(names)]]
        row = rows[rng.randrange(len(rows))]
        row["text"] = row["text"] + " Revised: the warranty now covers two more years."
    for k in range(deletes):
        rows = corpus[names[(k + len(names) // 2) % len(names)]]
        rows.pop(rng.randrange(len(rows)))
    renamed = rng.sample(names, max(1, len(names) // 10))
    for name in names:
        (folder / name).unlink()
        target = f"renamed-{name}" if name in renamed else name
        pq.write_table(pa.Table.from_pylist(corpus[name]), folder / target)
    return {"edited": edits, "deleted": deletes, "renamed": len(renamed), "docs": total - deletes}


def config(work: Path, source: Path, name: str) -> Path:
    import yaml

    cfg = {"source": {"uri": str(source), "id_column": "id", "text_column": "text", "lang_column": "lang",
                      "metadata_columns": ["lang"]},
           "model": {"name": str(MODEL), "precision": "fp32"},
           "batch": {"max_tokens": 8192},
           "cluster": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1},
           "milvus": {"uri": str(work / f"{name}.db"), "collection": name, "store_text": True},
           "checkpoint": {"uri": str(work / f"{name}-state")}, "errors": {"uri": None},
           "mode": "incremental", "delete_missing": True, "log_every_s": 60}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def run_job(cfg: Path) -> dict[str, Any]:
    summary = cfg.with_suffix(".summary.json")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.embed", "--config", str(cfg), "--summary", str(summary)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"jobs.embed exited {proc.returncode}")
    out = json.loads(summary.read_text())
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


def rows(db: Path, collection: str) -> dict[str, dict[str, Any]]:
    from pymilvus import MilvusClient

    client = MilvusClient(str(db))
    try:
        client.load_collection(collection)
        it = client.query_iterator(collection, batch_size=1000, filter="chunk_index >= 0",
                                   output_fields=["pk", "doc_id", "chunk_index", "text", "embed_fp", "dense"])
        out = {}
        while batch := it.next():
            out.update({r["pk"]: r for r in batch})
        it.close()
        return out
    finally:
        client.close()


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    common = sorted(set(a) & set(b))
    text = sum(1 for k in common if a[k]["text"] != b[k]["text"] or a[k]["embed_fp"] != b[k]["embed_fp"])
    diff = max((float(np.abs(np.asarray(a[k]["dense"], np.float32) - np.asarray(b[k]["dense"], np.float32)).max())
                for k in common), default=0.0)
    return {"rows": len(a), "rows_fresh": len(b), "stale_rows": len(only_a), "missing_rows": len(only_b),
            "text_or_fingerprint_differs": text, "max_abs_dense_diff": diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--docs", type=int, default=100, help="documents per shard (short: a title or a first sentence)")
    ap.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    args = ap.parse_args(argv)
    if not MODEL.is_dir():
        raise SystemExit(f"{MODEL} is missing: run `make model` first")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "corpus"
    corpus = write_corpus(source, args.shards, args.docs)
    print(f"machine: {cpu_name()}")
    print(f"corpus: {args.shards} shards x {args.docs} documents in {work}")
    full = run_job(config(work, source, "nightly"))
    what = change(source, corpus)
    incremental = run_job(config(work, source, "nightly"))
    fresh = run_job(config(work, source, "fresh"))
    eq = compare(rows(work / "nightly.db", "nightly"), rows(work / "fresh.db", "fresh"))
    ratio = incremental["tokens"] / full["tokens"]
    keys = ("docs_read", "docs_unchanged", "chunks_embedded", "tokens", "tokens_skipped", "docs_deleted",
            "shards_skipped", "wall_s")
    print(f"change: {what}")
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, s in (("full", full), ("incremental", incremental), ("from scratch (new source)", fresh)):
        print(f"| {name} | " + " | ".join(str(s.get(k)) for k in keys) + " |")
    print(f"tokens embedded by the incremental run / full run: {incremental['tokens']} / {full['tokens']} = "
          f"{ratio:.4f} (goal <= 0.02)")
    print(f"incremental collection vs from-scratch build: {json.dumps(eq)}")
    equal = (eq["stale_rows"] == 0 and eq["missing_rows"] == 0 and eq["text_or_fingerprint_differs"] == 0
             and eq["max_abs_dense_diff"] < 1e-4)
    print(f"equal: {equal}; within goal: {ratio <= 0.02}")
    return 0 if equal and ratio <= 0.02 else 1


if __name__ == "__main__":
    raise SystemExit(main())
