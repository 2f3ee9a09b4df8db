"""The write path and the driver's per-unit costs (not a test: prints figures and ratios).

Part 1, write throughput, vectors precomputed so the model is out of the picture: embedded blocks
(BGE-M3-like rows: dense 1024, ~100 sparse weights, ~1 kB of text) are made by Ray tasks into the
object store, then written into a ``milvus-lite server`` either the old way (the driver fetches
each block and upserts it itself: "driver-writer") or by 1, 2 and 4 writer actors fed block
references (the driver touches records only). Per configuration: rows/s and the driver's CPU
microseconds per row, in the same run.

Part 2, the driver's marginal CPU per row of a whole job, measured from outside as the issue did:
``python -m jobs.embed`` with a tiny dense+sparse model on a small and a 4x larger corpus; the
difference of the summaries' ``driver_cpu_s`` over the difference of rows.

Part 3, the driver's memory against the number of documents: the driver's bookkeeping (run
tracker, records of 512-chunk blocks, manifest records) for the same shards holding 100k and
10M documents, each in a fresh process; and the id pass (duplicates over the per-shard id files)
for 10M ids, whose memory is bounded by its batches.

Part 4, the same whole job with the model replaced by precomputed random vectors, so that it runs
at the write path's speed: the driver's marginal CPU per row when rows arrive fast (part 2 runs
at the tiny model's speed on 2 cores, so per-second costs such as Ray Data's polling weigh in).

Usage: python benchmarks/sink.py [--rows 20000] [--parts 1,2,3,4] [--small 6000] [--block-rows 512,2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ---- part 1 ---------------------------------------------------------------------------------------
def make_block(seed: int, rows: int, dim: int = 1024, nnz: int = 100):  # noqa: ANN201 - a pyarrow Table
    import numpy as np
    import pyarrow as pa

    from cluster import contract as c
    from cluster.stages.arrow import fixed_list, list_array

    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((rows, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    ids = [f"doc-{seed}-{i}" for i in range(rows)]
    offsets = np.arange(rows + 1, dtype=np.int64) * nnz
    indices = np.sort(rng.integers(5, 250_000, size=(rows, nnz)), axis=1).reshape(-1).astype(np.int32)
    values = rng.random(rows * nnz, dtype=np.float32)
    text = "Ein Beispieltext über Router und Kaffeemaschinen. " * 20
    n = rows
    return pa.table({
        c.DOC_ID: ids, c.TEXT: [text] * n, c.SHARD: [f"shard-{seed % 8}"] * n,
        c.ROW: pa.array(range(n), pa.int64()),
        c.ERROR: pa.nulls(n, pa.string()), c.PREV_CHUNKS: pa.nulls(n, pa.int32()),
        c.SHARD_END: pa.nulls(n, pa.int64()),
        c.PK: [c.chunk_pk(d, 0) for d in ids], c.CHUNK_INDEX: pa.array([0] * n, pa.int32()),
        c.N_TOKENS: pa.array([256] * n, pa.int32()), c.N_CHUNKS: pa.array([1] * n, pa.int32()),
        c.LANG: ["de"] * n, c.DOC_CHARS: pa.array([len(text)] * n, pa.int64()), c.AT_LIMIT: [False] * n,
        c.TRUNCATED: [False] * n, c.SHARD_INFO: pa.nulls(n, pa.string()),
        c.DENSE: fixed_list(dense), c.PADDED_LEN: pa.array([256] * n, pa.int32()),
        c.FP32_RERUNS: pa.array([0] * n, pa.int32()),
        c.SPARSE_INDICES: list_array(offsets, indices), c.SPARSE_VALUES: list_array(offsets, values),
    })


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def part1(total_rows: int, block_rows: int = 500) -> list[dict[str, object]]:
    import ray

    from cluster.milvus import CollectionSpec, ensure_collection
    from cluster.milvus.connect import connect
    from cluster.milvus.lite import LiteServer
    from cluster.settings import ErrorsConfig, MilvusConfig
    from cluster.stages.write import BlockWriter, WriterSettings
    from cluster.writers import WriterPool

    work = Path(tempfile.mkdtemp(prefix="sink-"))
    lite = LiteServer(MilvusConfig(uri=str(work / "m.db"), collection="x")).start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    results = []
    try:
        maker = ray.remote(make_block).options(num_cpus=1)
        n_blocks = total_rows // block_rows
        for name, writers in (("driver-writer", 0), ("1 writer", 1), ("2 writers", 2), ("4 writers", 4)):
            collection = "c_" + name.replace(" ", "_").replace("-", "_")
            milvus = MilvusConfig(uri=lite.uri, collection=collection, store_text=True)
            spec = CollectionSpec.from_config(milvus, dense_dim=1024, has_sparse=True)
            client = connect(milvus)
            ensure_collection(client, spec)
            client.close()
            refs = [maker.remote(1000 * writers + i, block_rows) for i in range(n_blocks)]
            ray.wait(refs, num_returns=len(refs))  # made before the clock starts
            settings = WriterSettings(milvus=milvus, spec=spec, errors=ErrorsConfig(uri=None), dead_letter_options={},
                                      run_id="bench", replaces_rows=False)
            records: list[dict] = []
            if writers == 0:  # the old path: every block comes to the driver, which writes it
                writer = BlockWriter(settings, 0)
                c0, t0 = cpu(), time.perf_counter()
                for ref in refs:
                    records.append(writer.write(ray.get(ref)))
                seconds, driver = time.perf_counter() - t0, cpu() - c0
                writer.close()
            else:
                pool = WriterPool(settings, writers, cpus=0, node_id=None, on_confirmed=records.append,
                                  on_lost=lambda recs: None)
                c0, t0 = cpu(), time.perf_counter()
                for ref in refs:
                    pool.submit(ref)
                pool.drain()
                pool.checkpoint()
                seconds, driver = time.perf_counter() - t0, cpu() - c0
                pool.close()
            del refs
            rows = sum(s.get("rows_written", 0) for r in records for s in r["shards"].values())
            results.append({"config": name, "rows": rows, "seconds": round(seconds, 2),
                            "rows_per_s": round(rows / seconds), "driver_us_per_row": round(1e6 * driver / rows, 1)})
            print(json.dumps(results[-1]), flush=True)
    finally:
        ray.shutdown()
        lite.stop()
    base = results[0]["rows_per_s"]
    for r in results:
        r["vs_driver_writer"] = round(r["rows_per_s"] / base, 2)
    return results


# ---- part 2 ---------------------------------------------------------------------------------------
def job_run(docs: int, model: Path, work: Path, rows_per_task: int = 512) -> dict[str, object]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = work / f"docs-{docs}"
    src.mkdir(parents=True, exist_ok=True)
    per = docs // 8
    for k in range(8):
        ids = [f"d{k}-{i}" for i in range(per)]
        pq.write_table(pa.table({"id": ids, "text": [f"Short document {d} about routers and coffee." for d in ids]}),
                       src / f"part-{k}.parquet")
    tag = f"{docs}-{rows_per_task}"
    cfg = {"source": {"uri": str(src)}, "model": {"name": str(model), "precision": "fp32"},
           "batch": {"max_tokens": 4096}, "chunking": {"overlap": 4}, "cluster": {"rows_per_task": rows_per_task},
           "milvus": {"uri": str(work / f"m-{tag}.db"), "collection": "docs"},
           "checkpoint": {"uri": str(work / f"state-{tag}")}, "errors": {"uri": None}, "log_every_s": 30}
    path = work / f"job-{tag}.json"
    path.write_text(json.dumps(cfg))
    summary = work / f"summary-{tag}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([sys.executable, "-m", "jobs.embed", "--config", str(path), "--summary", str(summary)],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def part2(small: int, block_rows: list[int]) -> dict[str, object]:
    """The driver's marginal CPU per row between a small and a 4x larger job, per embed block size."""
    from tests.tiny_model import build_tiny_m3

    work = Path(tempfile.mkdtemp(prefix="sink-job-"))
    model = build_tiny_m3(work / "tiny-m3")
    out: dict[str, object] = {}
    for rows_per_task in block_rows:
        a, b = job_run(small, model, work, rows_per_task), job_run(small * 4, model, work, rows_per_task)
        marginal = (b["driver_cpu_s"] - a["driver_cpu_s"]) / (b["rows_written"] - a["rows_written"])
        keys = ("rows_written", "driver_cpu_s", "driver_peak_rss_mb", "elapsed_s")
        out[f"rows_per_task={rows_per_task}"] = {"small": {k: a[k] for k in keys}, "large": {k: b[k] for k in keys},
                                                 "driver_marginal_us_per_row": round(1e6 * marginal, 1)}
        print(json.dumps({rows_per_task: out[f"rows_per_task={rows_per_task}"]}), flush=True)
    return out


# ---- part 4 ---------------------------------------------------------------------------------------
class PrecomputedEmbed:
    """Stands in for the model in part 4 only: the embed stage's output columns with random unit vectors,
    so that the whole job (read, Ray Data, writers, driver) runs at the write path's speed."""

    def __init__(self, model, batch, chunking, inject_exit=None) -> None:  # noqa: ANN001 - EmbedStage's signature
        from embedder.models.info import load_model_info

        info = load_model_info(model)
        self.dim, self.sparse = model.dense_dim or info.dim, info.has_sparse_head and model.sparse is not False

    @staticmethod
    def placement(cluster):  # noqa: ANN001, ANN205
        from cluster.stages.embed import EmbedStage

        return EmbedStage.placement(cluster)

    def __call__(self, table):  # noqa: ANN001, ANN204
        import numpy as np
        import pyarrow as pa

        from cluster import contract as c
        from cluster.stages.arrow import fixed_list, is_payload, list_array

        n, ok = table.num_rows, is_payload(table)
        rng = np.random.default_rng(n)
        dense = rng.standard_normal((n, self.dim)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        out = table.drop_columns([c.INPUT_IDS])
        out = out.append_column(c.DENSE, fixed_list(dense, ok))
        out = out.append_column(c.PADDED_LEN, table.column(c.N_TOKENS).cast(pa.int32()))
        out = out.append_column(c.FP32_RERUNS, pa.array(np.zeros(n, np.int32)))
        if self.sparse:
            nnz = np.where(ok, 100, 0)
            offsets = np.concatenate([[0], np.cumsum(nnz)])
            idx = np.sort(rng.integers(5, 250_000, size=(n, 100)), axis=1)[ok].reshape(-1).astype(np.int32)
            out = out.append_column(c.SPARSE_INDICES, list_array(offsets, idx, ok))
            out = out.append_column(c.SPARSE_VALUES, list_array(offsets, rng.random(len(idx), dtype=np.float32), ok))
        return out


PRECOMPUTED_JOB = r"""
import sys
sys.path.insert(0, sys.argv[1])
import cluster.pipeline
from benchmarks.sink import PrecomputedEmbed
cluster.pipeline.EmbedStage = PrecomputedEmbed
from jobs.embed import main
sys.exit(main(sys.argv[2:]))
"""


def part4(sizes: tuple[int, int], block_rows: list[int]) -> dict[str, object]:
    """The whole job with the model replaced by precomputed vectors: the driver's CPU per row at the write
    path's speed (its time-based costs, polling, are then small per row)."""
    from tests.tiny_model import build_tiny_m3

    work = Path(tempfile.mkdtemp(prefix="sink-pre-"))
    model = build_tiny_m3(work / "tiny-m3")
    return {f"rows_per_task={n}": _part4_runs(work, model, sizes, n) for n in block_rows}


def _part4_runs(work: Path, model: Path, sizes: tuple[int, int], rows_per_task: int) -> dict[str, object]:
    runs = []
    for docs in sizes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        src = work / f"docs-{docs}"
        if not src.exists():
            src.mkdir()
            for k in range(8):
                ids = [f"d{k}-{i}" for i in range(docs // 8)]
                pq.write_table(pa.table({"id": ids, "text": [f"Short document {d} about routers." for d in ids]}),
                               src / f"part-{k}.parquet")
        docs = f"{docs}-{rows_per_task}"
        cfg = {"source": {"uri": str(src), "read_batch_rows": max(1024, rows_per_task)},
               "model": {"name": str(model), "precision": "fp32"},
               "cluster": {"rows_per_task": rows_per_task, "writers": 2},
               "milvus": {"uri": str(work / f"m-{docs}.db"), "collection": "docs"},
               "checkpoint": {"uri": str(work / f"state-{docs}")}, "errors": {"uri": None}, "log_every_s": 30}
        (work / f"job-{docs}.json").write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run([sys.executable, "-c", PRECOMPUTED_JOB, str(ROOT), "--config", str(work / f"job-{docs}.json"),
                        "--summary", str(work / f"summary-{docs}.json")], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(json.loads((work / f"summary-{docs}.json").read_text()))
    a, b = runs
    keys = ("rows_written", "driver_cpu_s", "driver_peak_rss_mb", "elapsed_s", "startup_s")
    out = {"small": {k: a[k] for k in keys}, "large": {k: b[k] for k in keys},
           "rows_per_s_large": round(b["rows_written"] / (b["elapsed_s"] - b["startup_s"])),
           "driver_marginal_us_per_row": round(1e6 * (b["driver_cpu_s"] - a["driver_cpu_s"])
                                               / (b["rows_written"] - a["rows_written"]), 1)}
    print(json.dumps({rows_per_task: out}), flush=True)
    return out


# ---- part 3 ---------------------------------------------------------------------------------------
DRIVER_STATE = r"""
import json, resource, sys, tempfile, time
sys.path.insert(0, sys.argv[3])
from cluster.manifest import Manifest, Store
from cluster.progress import RunTracker
from cluster.source import Shard
docs, shards = int(sys.argv[1]), int(sys.argv[2])
per = docs // shards
shard_list = [Shard(path=f"s3://bucket/docs/part-{k:05d}.parquet", format="parquet", size=per * 500,
                    version="etag:x") for k in range(shards)]
tracker = RunTracker(shard_list)
manifest = Manifest(Store(tempfile.mkdtemp()), {"bench": docs})
rec_rows = 512
t0 = time.process_time()
for s in shard_list:
    left = per
    while left > 0:
        n = min(rec_rows, left)
        left -= n
        counts = {"docs_seen": n, "docs_failed": 0, "chunks_seen": n, "chunks_expected": n, "chunks_ok": n,
                  "chunks_failed": 0, "tokens": 200 * n, "padded_tokens": 220 * n, "truncated": 0, "rows_written": n}
        if left == 0:
            counts.update(docs_total=per, error=None,
                          info={"duplicates": 0, "docs_unique": per, "ids": "ids/x.parquet"})
        done = tracker.add({"shards": {s.path: counts}, "languages": {"de": {"docs": n, "chars": 400 * n,
                            "tokens": 200 * n, "chunks": n, "chunks_at_limit": 0}}, "rejects": 0,
                            "reject_samples": [], "fp32_reruns": 0, "at": time.time()})
        for path in done:
            st = tracker.shards[path]
            manifest.mark_done([(s, st.manifest_counts(), st.info.get("ids"))])
summary = tracker.summary()
print(json.dumps({"docs": docs, "shards": shards, "records": docs // rec_rows,
                  "cpu_s": round(time.process_time() - t0, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "docs_read": summary["docs_read"]}))
"""

ID_FILES = r"""
import sys, numpy as np, pyarrow as pa
sys.path.insert(0, sys.argv[4])
from cluster.manifest.ids import shard_ids, write_table
from fsspec.implementations.local import LocalFileSystem
docs, shards, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
per = docs // shards
for k in range(shards):  # every 10th id of a shard also appears in the next shard: cross-shard duplicates
    ids = [f"doc-{k * per + i:012d}" for i in range(per)]
    ids += [f"doc-{(k + 1) * per + i:012d}" for i in range(0, per, 10)]
    table, _ = shard_ids(pa.array(ids), np.ones(len(ids), np.int32))
    write_table(LocalFileSystem(), f"{root}/{k}.parquet", table)
print("{}")
"""

ID_PASS = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from cluster.manifest.ids import distinct_count
from fsspec.implementations.local import LocalFileSystem
docs, shards, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
paths = [f"{root}/{k}.parquet" for k in range(shards)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
distinct = distinct_count(LocalFileSystem(), paths, f"{root}/tmp")
seconds = time.perf_counter() - t0
print(json.dumps({"ids": docs, "files": shards, "distinct": distinct, "seconds": round(seconds, 1),
                  "us_per_id": round(1e6 * seconds / docs, 2), "rss_at_start_mb": round(base, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def part3() -> dict[str, object]:
    def child(code: str, *args: object) -> dict[str, object]:
        out = subprocess.run([sys.executable, "-c", code, *map(str, args), str(ROOT)], check=True,
                             capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    state = [child(DRIVER_STATE, n, 200) for n in (100_000, 10_000_000)]
    for s in state:
        print(json.dumps(s), flush=True)
    idpass = []
    for n in (1_000_000, 10_000_000):
        root = tempfile.mkdtemp(prefix="ids-")
        child(ID_FILES, n, 200, root)  # written by another process, as the read tasks would
        idpass.append(child(ID_PASS, n, 200, root))
        print(json.dumps(idpass[-1]), flush=True)
    ratio = round(state[1]["peak_rss_mb"] / state[0]["peak_rss_mb"], 3)
    out = {"driver_state": state, "driver_rss_ratio_10M_vs_100k": ratio, "id_pass": idpass}
    print(json.dumps({"driver_rss_ratio_10M_vs_100k": ratio}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows per configuration in part 1")
    p.add_argument("--small", type=int, default=6_000, help="documents of the small job in part 2 (large: 4x)")
    p.add_argument("--parts", default="1,2,3,4")
    p.add_argument("--block-rows", default="512,4096", help="parts 2 and 4: cluster.rows_per_task values")
    p.add_argument("--json", type=Path, help="write all figures here")
    args = p.parse_args()
    parts = {int(x) for x in args.parts.split(",")}
    out: dict[str, object] = {}
    if 1 in parts:
        out["write_path"] = part1(args.rows)
    if 2 in parts:
        out["job_driver_cpu"] = part2(args.small, [int(x) for x in args.block_rows.split(",")])
    if 3 in parts:
        out["driver_memory"] = part3()
    if 4 in parts:
        out["job_precomputed"] = part4((args.small, args.small * 4), [int(x) for x in args.block_rows.split(",")])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
