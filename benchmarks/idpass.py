"""The end-of-run id pass's merge: time per id, in one process and as 2 and 4 parallel Ray tasks (not a test).

Two layouts of 200 id files (as the read tasks write them), each in its own folder:

* ``sequential``: part 3 of ``benchmarks/sink.py``: shard k holds ids k*per .. (k+1)*per - 1 and
  every 10th id of shard k+1 (cross-shard duplicates; the ranges overlap in a chain, so every file
  is merged);
* ``random``: 16 hex digits drawn at random, every 10th of shard k+1's ids in shard k too: each
  file spans the whole key space, so every round of the merge interleaves all its files.

Per layout, each in a fresh process: the baseline (the per-id Python merge the id pass used up to
commit 30804ad, with ``to_pylist`` and ``bisect``, copied below), then the Arrow merge
(``cluster.manifest.ids.distinct_count``) in one process and with its first level as 2 and 4
Ray tasks (``cluster.stages.idpass.ray_runner``; a warm-up starts the workers first). Each counts
distinct ids and collects the ids held by several files, as the id pass does. Every configuration
runs ``--repeat`` times, interleaved with the others; the fastest of each is reported (with
``--quiet-load``, each waits for the machine's load average to drop first: other jobs share it).

Usage: python benchmarks/idpass.py [--ids 10000000] [--files 200] [--layouts sequential,random]
                                   [--tasks 1,2,4] [--repeat 3] [--quiet-load 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WRITE = r"""
import sys, numpy as np, pyarrow as pa
sys.path.insert(0, sys.argv[5])
from cluster.manifest.ids import shard_ids, write_table
from fsspec.implementations.local import LocalFileSystem
docs, shards, root, layout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
per = docs // shards
rng = np.random.default_rng(0)
keys = rng.integers(0, 2**63, docs, dtype=np.int64) if layout == "random" else None
def name(i):
    return f"{int(keys[i % docs]):016x}" if layout == "random" else f"doc-{i:012d}"
for k in range(shards):  # every 10th id of a shard also appears in the previous shard: cross-shard duplicates
    ids = [name(k * per + i) for i in range(per)] + [name((k + 1) * per + i) for i in range(0, per, 10)]
    table, _ = shard_ids(pa.array(ids), np.ones(len(ids), np.int32))
    write_table(LocalFileSystem(), f"{root}/{k}.parquet", table)
print("{}")
"""

MEASURE = r"""
import bisect, json, os, resource, sys, time
sys.path.insert(0, sys.argv[5])
import pyarrow as pa, pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem
from cluster.manifest import ids
docs, shards, root, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
fs = LocalFileSystem()
paths = [f"{root}/{k}.parquet" for k in range(shards)]


def old_merge(paths, out, rows, repeated):  # the id pass's merge up to commit 30804ad (the baseline)
    streams = [(b.column(0) for b in ids.iter_batches(fs, p, rows)) for p in paths]
    arrays = [next(s, None) for s in streams]
    values = [a.to_pylist() if a is not None else [] for a in arrays]
    pos = [0] * len(paths)
    writer = ids.pq.ParquetWriter(fs.open(out, "wb"), pa.schema([("doc_id", pa.string())]),
                                  compression="zstd") if out else None
    distinct = 0
    try:
        while True:
            live = [i for i in range(len(paths)) if pos[i] < len(values[i])]
            if not live:
                break
            frontier = min(values[i][-1] for i in live)
            parts = []
            for i in live:
                cut = bisect.bisect_right(values[i], frontier, lo=pos[i])
                if cut > pos[i]:
                    parts.append(arrays[i].slice(pos[i], cut - pos[i]))
                pos[i] = cut
                if cut == len(values[i]):
                    arrays[i] = next(streams[i], None)
                    values[i] = arrays[i].to_pylist() if arrays[i] is not None else []
                    pos[i] = 0
            joined = pa.concat_arrays(parts)
            merged = pc.unique(joined)
            distinct += len(merged)
            if repeated is not None and len(merged) < len(joined):
                counts = pc.value_counts(joined)
                repeated.append(counts.field("values").filter(pc.greater(counts.field("counts"), 1)))
            if writer is not None:
                writer.write_table(pa.table({"doc_id": merged.take(pc.sort_indices(merged))}))
    finally:
        if writer is not None:
            writer.close()
    return distinct


def old_distinct_count(paths, scratch, fan_in=64, rows=8192, repeated=None):
    if len(paths) <= fan_in:
        return old_merge(paths, None, rows, repeated) if paths else 0
    level = [(paths[i:i + fan_in], f"{scratch}/merge-{i}.parquet") for i in range(0, len(paths), fan_in)]
    fs.makedirs(scratch, exist_ok=True)
    for group, out in level:
        old_merge(group, out, rows, repeated)
    return old_distinct_count([o for _, o in level], scratch, fan_in, rows, repeated)


repeated = []
if how == "baseline":
    t0, c0 = time.perf_counter(), time.process_time()
    distinct = old_distinct_count(paths, f"{root}/tmp-old", repeated=repeated)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
else:
    tasks = int(how)
    run = None
    if tasks > 1:
        import ray
        from cluster.stages.idpass import ray_runner
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": sys.argv[5]}})
        run = ray_runner(root, {}, tasks, pin=True)
        warm = [f"{root}/{k}.parquet" for k in range(2 * tasks)]  # starts the workers: not timed
        ids.distinct_count(fs, warm, f"{root}/tmp-warm", fan_in=2, rows=64, run=run, parallel=tasks)
    t0, c0 = time.perf_counter(), time.process_time()
    distinct = ids.distinct_count(fs, paths, f"{root}/tmp", run=run, parallel=tasks, repeated=repeated)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
rep = len(pc.unique(pa.concat_arrays(repeated))) if repeated else 0
print(json.dumps({"how": how, "ids": docs, "files": shards, "distinct": distinct, "repeated": rep,
                  "seconds": round(seconds, 2), "us_per_id": round(1e6 * seconds / docs, 3),
                  "cpu_s_this_process": round(cpu, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def wait_for_quiet(limit: float, longest_s: float = 180) -> float:
    """Waits (at most ``longest_s``) until the 1-minute load average is below ``limit``; returns it."""
    end = time.monotonic() + longest_s
    while True:
        load = os.getloadavg()[0]
        if limit <= 0 or load < limit or time.monotonic() > end:
            return load
        time.sleep(10)


def child(code: str, *args: object) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args), str(ROOT)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ids", type=int, default=10_000_000)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--layouts", default="sequential,random")
    p.add_argument("--tasks", default="1,2,4", help="Arrow merge: in one process (1) or as this many Ray tasks")
    p.add_argument("--repeat", type=int, default=3, help="rounds of every configuration, interleaved; the fastest "
                                                         "of each is reported (the least disturbed by other load)")
    p.add_argument("--quiet-load", type=float, default=0.0,
                   help="before each measurement wait (up to 3 min) for the 1-minute load average to drop below this")
    args = p.parse_args()
    out: dict[str, list[dict[str, object]]] = {}
    hows = ["baseline", *args.tasks.split(",")]
    for layout in args.layouts.split(","):
        root = tempfile.mkdtemp(prefix=f"idpass-{layout}-")
        try:
            child(WRITE, args.ids, args.files, root, layout)  # written by another process, as read tasks would
            seen: dict[str, list[dict[str, object]]] = {how: [] for how in hows}
            for _ in range(args.repeat):
                for how in hows:
                    load = wait_for_quiet(args.quiet_load)
                    seen[how].append({"layout": layout, **child(MEASURE, args.ids, args.files, root, how),
                                      "load_before": round(load, 2)})
                    print(json.dumps(seen[how][-1]), flush=True)
            runs = []
            for how in hows:
                best = dict(min(seen[how], key=lambda r: float(r["seconds"])))  # type: ignore[arg-type]
                best["all_seconds"] = [r["seconds"] for r in seen[how]]
                runs.append(best)
            base = float(runs[0]["us_per_id"])  # type: ignore[arg-type]
            for r in runs[1:]:
                r["baseline_ratio"] = round(base / float(r["us_per_id"]), 2)  # type: ignore[arg-type]
                assert r["distinct"] == runs[0]["distinct"] and r["repeated"] == runs[0]["repeated"], r
            out[layout] = runs
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
