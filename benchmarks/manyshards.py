"""The driver's per-shard costs at 10^5 shards (not a test: prints figures and ratios).

Part ``record``: the driver's stream loop with N finished shards (default 100,000), each added
to the run's tracker and handed to the recorder as the upsert sink does, against a checkpoint
storage that takes ``--latency-ms`` per call (and 0 ms): the loop's wall time and CPU per shard,
how long the final flush waits, manifest objects written per checkpoint. The baseline, in the
same process on the same slow storage: the previous way, one record PUT (and one DELETE) per
shard in the loop, timed on ``--baseline`` shards.

Part ``plan``: N tiny jsonl shards on local disk, all recorded (one index, as a finished run
leaves it) and the same records in the layout before segments (one object per shard); the real
``cluster.plan.plan`` of an incremental run (lists the source, takes the lease, opens milvus-lite,
reads the records, finds nothing to do) and ``python -m jobs.plan``; loading the records alone
from each layout. Peak memory of the process.

Part ``s3``: ``--s3-shards`` (default 10,000) records on the moto S3 server: loading them as one
index against one object per shard.

Part ``job``: two whole jobs (``jobs.embed``, vectors precomputed as in ``benchmarks/sink.py``'s
part 4) on ``--job-shards`` tiny parquet shards (default 250 and 1,000, 3 documents each): the
driver's marginal CPU per shard from the summaries' ``driver_cpu_s``, and the manifest objects
the run wrote (segments, compacted at its end).

The id pass's time per id with 1, 2 and 4 parallel tasks is measured by ``benchmarks/idpass.py``.

Usage: python benchmarks/manyshards.py [--shards 100000] [--s3-shards 10000] [--job-shards 250,1000]
       [--parts record,plan,s3,job]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({os.cpu_count()} CPUs; {' '.join(wanted)})"


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def slow_store(uri: str, latency_s: float):  # noqa: ANN201 - a Store
    """A checkpoint storage whose every call takes ``latency_s`` longer (object storage at 20-30 ms a call)."""
    from cluster.manifest import Store

    class Slow(Store):
        calls = {"put": 0, "get": 0, "delete": 0, "list": 0}

        def child(self, rel: str) -> Slow:
            sub = Slow(f"{self.uri}/{rel}")
            return sub

        def put_bytes(self, rel: str, data: bytes) -> None:
            Slow.calls["put"] += 1
            time.sleep(latency_s)
            super().put_bytes(rel, data)

        def get_bytes(self, rel: str) -> bytes | None:
            Slow.calls["get"] += 1
            time.sleep(latency_s)
            return super().get_bytes(rel)

        def delete(self, rel: str) -> None:
            Slow.calls["delete"] += 1
            time.sleep(latency_s)
            super().delete(rel)

        def list(self, rel_dir: str, suffix: str = "") -> list[str]:
            Slow.calls["list"] += 1
            time.sleep(latency_s)
            return super().list(rel_dir, suffix)

    return Slow(uri)


def shards_of(n: int, prefix: str = "s3://bucket/export/part-"):  # noqa: ANN201
    from cluster.source import Shard

    return [Shard(path=f"{prefix}{k:07d}.jsonl", format="jsonl", size=1000 + k, version=f"etag:{k}") for k in range(n)]


def finished(path: str, k: int) -> dict[str, object]:
    """A writer's confirmed record finishing a 3-document shard (what the tracker adds per shard)."""
    return {"shards": {path: {"docs_seen": 3, "docs_failed": 0, "chunks_seen": 3, "chunks_expected": 3, "chunks_ok": 3,
                              "chunks_failed": 0, "tokens": 60, "padded_tokens": 64, "truncated": 0, "rows_written": 3,
                              "docs_total": 3, "error": None,
                              "info": {"duplicates": 0, "docs_unique": 3, "ids": f"ids/{k:07d}-run.parquet",
                                       "id_kinds": ["string"]}}},
            "languages": {"en": {"docs": 3, "chars": 300, "tokens": 60, "chunks": 3, "chunks_at_limit": 0}},
            "rejects": 0, "reject_samples": [], "fp32_reruns": 0, "at": time.time()}


def part_record(n: int, latency_ms: float, baseline: int) -> dict[str, object]:
    from cluster.manifest import Manifest
    from cluster.manifest.manifest import shard_key
    from cluster.plan import Plan
    from cluster.progress import RunTracker
    from cluster.recorder import ShardRecorder

    out: dict[str, object] = {}
    for lat in (0.0, latency_ms / 1000):
        shards = shards_of(n)
        store = slow_store(tempfile.mkdtemp(prefix="manyshards-rec-"), lat)
        manifest = Manifest(store, {"bench": "record", "latency": lat})
        the_plan = Plan(run_id="bench", shards=shards, spec=None, client=None, milvus=None, lease=None,
                        manifest=manifest)
        tracker = RunTracker(shards)
        recorder = ShardRecorder(the_plan, tracker)
        before = dict(type(store).calls)
        t0, c0 = time.perf_counter(), time.thread_time()
        for k, s in enumerate(shards):  # the stream loop: a confirmed record finishes a shard, the sink queues it
            recorder.record_all(tracker.add(finished(s.path, k)))
        loop_s, loop_cpu = time.perf_counter() - t0, time.thread_time() - c0
        t1 = time.perf_counter()
        recorder.flush()
        flush_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        manifest.compact()  # what the end of the run does
        compact_s = time.perf_counter() - t2
        recorder.close()
        calls = {k: v - before[k] for k, v in type(store).calls.items()}
        segments = recorder.written
        out[f"latency_{int(lat * 1000)}ms"] = {
            "shards": n, "loop_s": round(loop_s, 2), "loop_us_per_shard": round(1e6 * loop_s / n, 1),
            "loop_cpu_us_per_shard": round(1e6 * loop_cpu / n, 1), "flush_s": round(flush_s, 2),
            "segments": segments, "shards_per_segment": round(n / max(segments, 1)),
            "index_objects": len(manifest.store.list("records", ".parquet")),
            "end_compaction_s": round(compact_s, 2), "storage_calls": calls}
        print(json.dumps({"record": {f"latency_{int(lat * 1000)}ms": out[f"latency_{int(lat * 1000)}ms"]}}),
              flush=True)
    # The previous way, on the same slow storage: one PUT and one DELETE per shard, in the loop.
    store = slow_store(tempfile.mkdtemp(prefix="manyshards-old-"), latency_ms / 1000)
    shards = shards_of(baseline)
    tracker = RunTracker(shards)
    t0 = time.perf_counter()
    for k, s in enumerate(shards):
        for path in tracker.add(finished(s.path, k)):
            st = tracker.shards[path]
            store.put_json(f"shards/{shard_key(path)}.json", {"path": path, "size": s.size, "version": s.version,
                                                              "ids": st.info.get("ids"), **st.manifest_counts()})
            store.delete(f"ids/{shard_key(path)}-older.parquet")
    old = (time.perf_counter() - t0) / baseline
    new = out[f"latency_{int(latency_ms)}ms"]["loop_us_per_shard"] / 1e6  # type: ignore[index]
    out["before_one_put_per_shard"] = {"shards": baseline, "loop_us_per_shard": round(1e6 * old, 1),
                                       "projected_loop_s_at_n": round(old * n, 1),
                                       "ratio_new_to_before": round(new / old, 4)}
    print(json.dumps({"record": {"before": out["before_one_put_per_shard"]}}), flush=True)
    return out


PLAN_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from jobs.config import load_config
what, cfg_path = sys.argv[2], sys.argv[3]
cfg = load_config(cfg_path)
from cluster.plan import plan
from cluster.manifest import Store
from cluster.manifest.record_log import RecordLog
t0 = time.perf_counter()
if what == "plan":
    p = plan(cfg)
    extra = {"to_do": len(p.shards), "skipped": p.skipped}
    p.lease.release()
    p.client.close()
else:
    extra = {"records": len(RecordLog(Store(sys.argv[4])).load())}
print(json.dumps({"s": round(time.perf_counter() - t0, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **extra}))
"""


def part_plan(n: int) -> dict[str, object]:
    from cluster.manifest import Manifest, Store, job_identity
    from cluster.manifest.manifest import shard_key
    from cluster.source import list_shards
    from jobs.config import load_config
    from tests.tiny_model import build_tiny_m3

    work = Path(tempfile.mkdtemp(prefix="manyshards-plan-"))
    src = work / "src"
    src.mkdir()
    t0 = time.perf_counter()
    for k in range(n):
        (src / f"part-{k:07d}.jsonl").write_text(f'{{"id": "d{k}", "text": "Document {k} about routers."}}\n')
    made_s = time.perf_counter() - t0
    model = build_tiny_m3(work / "tiny-m3")
    cfg_path = work / "job.json"
    cfg_path.write_text(json.dumps({
        "source": {"uri": str(src), "format": "jsonl"}, "model": {"name": str(model), "precision": "fp32"},
        "milvus": {"uri": str(work / "m.db"), "collection": "docs"}, "checkpoint": {"uri": str(work / "state")},
        "errors": {"uri": None}, "mode": "incremental"}))
    cfg = load_config(str(cfg_path))
    listed = list_shards(cfg.source)
    manifest = Manifest(Store(cfg.checkpoint.uri), job_identity(cfg))
    counts = {"docs": 1, "chunks": 1, "docs_unique": 1}
    for i in range(0, len(listed), 1000):  # as a run's checkpoints record them
        manifest.mark_done([(s, counts, None) for s in listed[i:i + 1000]])
    manifest.compact()
    folder = manifest.store.root
    legacy = Store(str(work / "legacy"))  # the same records, one object per shard (the layout before segments)
    for path, rec in manifest.records().items():
        legacy.put_json(f"shards/{shard_key(path)}.json", rec)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}

    def child(*args: str) -> dict[str, object]:
        proc = subprocess.run([sys.executable, "-c", PLAN_CHILD, str(ROOT), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    out: dict[str, object] = {"shards": n, "made_source_s": round(made_s, 1)}
    out["plan"] = child("plan", str(cfg_path))
    out["records_index"] = child("load", str(cfg_path), folder)
    out["records_one_object_per_shard"] = child("load", str(cfg_path), str(work / "legacy"))
    t0 = time.perf_counter()
    est = subprocess.run([sys.executable, "-m", "jobs.plan", "--config", str(cfg_path), "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    out["jobs_plan"] = {"s": round(time.perf_counter() - t0, 2), "rc": est.returncode}
    print(json.dumps({"plan": out}), flush=True)
    return out


def part_s3(n: int) -> dict[str, object]:
    import s3fs
    from moto.server import ThreadedMotoServer

    from cluster.manifest import Store
    from cluster.manifest.manifest import shard_key
    from cluster.manifest.record_log import RecordLog
    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": opts["endpoint_url"]}, key="k", secret="s").mkdir("bench")
        store = Store("s3://bench/m", opts)
        log = RecordLog(store)
        shards = shards_of(n)
        for i in range(0, n, 1000):
            log.append([{"path": s.path, "size": s.size, "version": s.version, "generation": 1, "ids": None,
                         "docs": 3, "chunks": 3} for s in shards[i:i + 1000]])
        log.compact()
        legacy = Store("s3://bench/legacy", opts)
        t0 = time.perf_counter()
        for path, rec in log.view().items():
            legacy.put_json(f"shards/{shard_key(path)}.json", rec)
        put_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        a = RecordLog(Store("s3://bench/m", opts)).load()
        index_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = RecordLog(Store("s3://bench/legacy", opts)).load()
        legacy_s = time.perf_counter() - t0
        assert a == b
        out = {"shards": n, "load_index_s": round(index_s, 2), "load_one_object_per_shard_s": round(legacy_s, 2),
               "ratio": round(index_s / legacy_s, 4), "one_put_per_shard_s": round(put_s, 1)}
    finally:
        server.stop()
    print(json.dumps({"s3": out}), flush=True)
    return out


def part_job(sizes: tuple[int, int]) -> dict[str, object]:
    """Whole jobs (vectors precomputed, as sink.py's part 4) on a small and a 4x larger number of tiny
    shards: the driver's marginal CPU per shard, and the manifest segments the run wrote."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.sink import PRECOMPUTED_JOB
    from tests.tiny_model import build_tiny_m3

    work = Path(tempfile.mkdtemp(prefix="manyshards-job-"))
    model = build_tiny_m3(work / "tiny-m3")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    runs = {}
    for n in sizes:
        src = work / f"src-{n}"
        src.mkdir()
        for k in range(n):
            ids = [f"s{k}-d{i}" for i in range(3)]
            pq.write_table(pa.table({"id": ids, "text": [f"Document {d} about routers." for d in ids]}),
                           src / f"part-{k:07d}.parquet")
        cfg = {"source": {"uri": str(src)}, "model": {"name": str(model), "precision": "fp32"},
               "cluster": {"rows_per_task": 4096, "writers": 1},
               "milvus": {"uri": str(work / f"m-{n}.db"), "collection": "docs"},
               "checkpoint": {"uri": str(work / f"state-{n}"), "record_every_s": 5}, "errors": {"uri": None},
               "log_every_s": 30}
        (work / f"job-{n}.json").write_text(json.dumps(cfg))
        log = work / f"log-{n}.txt"
        with open(log, "wb") as out:
            subprocess.run([sys.executable, "-c", PRECOMPUTED_JOB, str(ROOT), "--config", str(work / f"job-{n}.json"),
                            "--summary", str(work / f"summary-{n}.json")], cwd=ROOT, env=env, check=True,
                           stdout=out, stderr=subprocess.STDOUT)
        summary = json.loads((work / f"summary-{n}.json").read_text())
        text = log.read_text(errors="replace")
        removed = [int(m.group(1)) for m in re.finditer(r"compacted into \S+ \((\d+) object", text)]
        runs[n] = {"shards_done": summary["shards_done"], "driver_cpu_s": summary["driver_cpu_s"],
                   "driver_peak_rss_mb": summary.get("driver_peak_rss_mb"), "elapsed_s": summary["elapsed_s"],
                   "segments_and_files_compacted": sum(removed)}
        print(json.dumps({"job": {n: runs[n]}}), flush=True)
    a, b = (runs[n] for n in sizes)
    out = {"runs": runs, "driver_marginal_cpu_ms_per_shard": round(
        1e3 * (b["driver_cpu_s"] - a["driver_cpu_s"]) / (b["shards_done"] - a["shards_done"]), 2)}
    print(json.dumps({"job": out}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=100_000)
    ap.add_argument("--s3-shards", type=int, default=10_000)
    ap.add_argument("--latency-ms", type=float, default=25.0)
    ap.add_argument("--baseline", type=int, default=400, help="shards recorded the previous way (slow: 2 calls each)")
    ap.add_argument("--job-shards", default="250,1000", help="tiny shards of the two whole jobs (part job)")
    ap.add_argument("--parts", default="record,plan,s3,job")
    args = ap.parse_args()
    print(json.dumps({"cpu": cpu_name()}), flush=True)
    parts = args.parts.split(",")
    result: dict[str, object] = {"cpu": cpu_name()}
    if "record" in parts:
        result["record"] = part_record(args.shards, args.latency_ms, args.baseline)
    if "plan" in parts:
        result["plan"] = part_plan(args.shards)
    if "s3" in parts:
        result["s3"] = part_s3(args.s3_shards)
    if "job" in parts:
        result["job"] = part_job(tuple(int(n) for n in args.job_shards.split(",")))  # type: ignore[arg-type]
    result["peak_rss_mb"] = peak_mb()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
