"""Writer CPU per row: the upsert path before and after column-wise requests, and the import files
against pymilvus' own LocalBulkWriter (not a test: prints figures and ratios).

All paths write the same N BGE-M3-size rows (dense 1024 float32, 100 sparse weights, ~1 kB of
text), held as the embed stage's pyarrow blocks (``benchmarks/sink.make_block``), in one process:

* (a) rows: today's path until this change: ``payload.to_rows`` (one dict per row) and pymilvus'
  ``Prepare.row_upsert_param`` + the serialization gRPC does, per request of 1,000 rows (client
  side only, no server); and end to end: ``MilvusWriter.write`` through a client that only takes
  rows, into a ``milvus-lite server`` (the writer's checks, request splitting, gRPC);
* (b) columns: ``columns.build_request`` + serialization; and end to end: ``MilvusWriter.write``
  with the job's client (column-wise requests), into the same server;
* (c) pymilvus' ``LocalBulkWriter`` writing one parquet file of the rows (``append_row`` per row of
  ``to_rows(sparse_as="lists")``, then ``commit``);
* (d) ``ImportFiles.write`` + ``close`` (``import_table`` column-wise, parquet row groups, and the
  "upload": a local file copy here, an S3 upload in a run); apart, its two main parts.

CPU is ``time.process_time()`` of this process (every thread: gRPC's too), the least of
``--repeat`` runs (the machine is shared: other work inflates CPU time too, never deflates it);
the milvus-lite server's CPU (its own process) is printed apart. cProfile (CPU time) of (a) and
(b) shows where the time goes.

Usage: python benchmarks/writers.py [--rows 20000] [--block-rows 2000] [--repeat 3] [--no-server] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REQUEST_ROWS = 1000  # milvus.write_batch_rows' default: rows per upsert request


def blocks(total: int, block_rows: int) -> list[Any]:
    """``sink.make_block`` blocks, each row's text made distinct (a prefix) as real chunks are."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from benchmarks.sink import make_block
    from cluster import contract as C

    out = []
    for i in range(total // block_rows):
        block = make_block(i, block_rows)
        prefix = pa.array([f"{i}-{k}: " for k in range(block_rows)])
        text = pc.binary_join_element_wise(prefix, block.column(C.TEXT), "")
        out.append(block.set_column(block.schema.get_field_index(C.TEXT), C.TEXT, text))
    return out


REPEAT = 3  # each path runs this many times; the least CPU (and wall) counts: the machine is shared


def measure(name: str, rows: int, fn: Any, repeat: int | None = None) -> dict[str, Any]:
    cpus, walls = [], []
    for _ in range(repeat or REPEAT):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - t0)
    cpu, wall = min(cpus), min(walls)
    out = {"path": name, "rows": rows, "cpu_us_per_row": round(1e6 * cpu / rows, 1),
           "wall_us_per_row": round(1e6 * wall / rows, 1), "rows_per_s": round(rows / wall),
           "cpu_us_per_row_runs": [round(1e6 * c / rows, 1) for c in cpus]}
    print(json.dumps(out), flush=True)
    return out


def profile(name: str, fn: Any, top: int = 14) -> None:
    prof = cProfile.Profile(time.process_time)
    prof.runcall(fn)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    print(f"--- cProfile of {name} (tottime) ---")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000], flush=True)


def client_side(data: list[Any], spec: Any, schema: dict[str, Any]) -> tuple[Any, Any]:
    """(a) and (b) without a server: the requests as gRPC would serialize them."""
    from pymilvus.client.prepare import Prepare

    from cluster.milvus import payload as R
    from cluster.milvus.columns import build_request

    def rows() -> None:
        for block in data:
            for s in range(0, block.num_rows, REQUEST_ROWS):
                part = block.slice(s, REQUEST_ROWS)
                Prepare.row_upsert_param(spec.name, R.to_rows(part, spec), "", schema["fields"]).SerializeToString()

    def cols() -> None:
        for block in data:
            for s in range(0, block.num_rows, REQUEST_ROWS):
                build_request(block.slice(s, REQUEST_ROWS), spec, schema).SerializeToString()

    return rows, cols


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class RowsOnly:
    """A client that only takes rows: ``MilvusWriter`` then writes as it did before column-wise requests."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def upsert(self, collection: str, rows: list[dict], timeout: float | None = None) -> Any:
        return self.client.upsert(collection, rows, timeout=timeout)


def end_to_end(data: list[Any], rows: int) -> list[dict[str, Any]]:
    from cluster.milvus import CollectionSpec, ensure_collection
    from cluster.milvus.connect import connect
    from cluster.milvus.lite import LiteServer
    from cluster.milvus.writer import MilvusWriter
    from cluster.settings import MilvusConfig

    work = Path(tempfile.mkdtemp(prefix="writers-"))
    lite = LiteServer(MilvusConfig(uri=str(work / "m.db"), collection="x")).start()
    out = []
    try:
        for name, wrap in (("(a) rows, end to end", RowsOnly), ("(b) columns, end to end", None)):
            cfg = MilvusConfig(uri=lite.uri, collection="c_" + name[1], store_text=True)
            spec = CollectionSpec.from_config(cfg, dense_dim=1024, has_sparse=True)
            client = connect(cfg)
            ensure_collection(client, spec)
            writer = MilvusWriter(wrap(client) if wrap else client, spec, cfg)
            s0 = proc_cpu(lite.proc.pid)
            res = measure(name, rows, lambda w=writer: [w.write(b) for b in data])  # upserts: the same rows again
            res["server_cpu_us_per_row"] = round(1e6 * (proc_cpu(lite.proc.pid) - s0) / rows / REPEAT, 1)
            res["requests"] = writer.requests
            print(json.dumps({"path": name, "server_cpu_us_per_row": res["server_cpu_us_per_row"]}), flush=True)
            assert writer.rows_written == rows * REPEAT
            client.close()
            out.append(res)
    finally:
        lite.stop()
    return out


def import_paths(data: list[Any], spec: Any, rows: int) -> list[dict[str, Any]]:
    import numpy as np
    import pyarrow.parquet as pq
    from pymilvus.bulk_writer import BulkFileType, LocalBulkWriter

    from cluster.milvus import payload as R
    from cluster.milvus.importfiles import ImportFiles, import_table, parquet_options
    from cluster.milvus.schema import build_schema
    from embedder.storage import filesystem

    work = Path(tempfile.mkdtemp(prefix="writers-import-"))
    out = []

    def bulk_writer() -> None:
        # segment_size above the data: one file, as ImportFiles writes here
        with LocalBulkWriter(schema=build_schema(spec), local_path=str(work / "lbw"), chunk_size=1 << 34,
                             file_type=BulkFileType.PARQUET) as w:
            for block in data:
                for row in R.to_rows(block, spec, sparse_as="lists"):
                    w.append_row(row)
            w.commit()

    def to_rows_only() -> None:
        for block in data:
            R.to_rows(block, spec, sparse_as="lists")

    def import_files() -> None:
        fs, root = filesystem(str(work / "out"), {})
        files = ImportFiles(spec, fs, root, "w0", max_file_bytes=1 << 33, scratch_dir=str(work / "scratch"))
        for block in data:
            files.write(block, np.zeros(block.num_rows, np.int32))
        files.close()

    tables = [import_table(block, spec) for block in data]

    def parquet_only() -> None:
        with pq.ParquetWriter(str(work / "parquet-only.parquet"), tables[0].schema,
                              **parquet_options(tables[0].schema)) as w:
            for t in tables:
                w.write_table(t, row_group_size=t.num_rows)

    def tables_only() -> None:
        for block in data:
            import_table(block, spec)

    out.append(measure("(c) LocalBulkWriter (to_rows + append_row + commit)", rows, bulk_writer))
    out.append(measure("    of which to_rows(sparse_as='lists')", rows, to_rows_only))
    out.append(measure("(d) ImportFiles (write + close: import_table, parquet, 'upload' = local copy)", rows,
                       import_files))
    out.append(measure("    of which import_table", rows, tables_only))
    out.append(measure("    of which parquet (pq.ParquetWriter, parquet_options)", rows, parquet_only))
    sizes = {p.name: p.stat().st_size for p in work.rglob("*.parquet")}
    print(json.dumps({"parquet_bytes": sizes}), flush=True)
    return out


def main() -> None:
    global REPEAT  # noqa: PLW0603 - one setting for every measure() of the run
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--block-rows", type=int, default=2_000, help="rows per embedded block (cluster.rows_per_task)")
    p.add_argument("--no-server", action="store_true", help="skip the end-to-end runs into milvus-lite")
    p.add_argument("--profile", action="store_true", help="cProfile (a) and (b) on a quarter of the rows")
    p.add_argument("--repeat", type=int, default=REPEAT, help="runs per path (the least CPU counts)")
    args = p.parse_args()
    REPEAT = args.repeat

    from cluster.milvus.schema import CollectionSpec, build_schema

    data = blocks(args.rows, args.block_rows)
    rows = sum(b.num_rows for b in data)
    spec = CollectionSpec(name="x", dense_dim=1024, has_sparse=True)
    schema = build_schema(spec).to_dict()
    old, new = client_side(data, spec, schema)
    if args.profile:
        quarter = data[:max(1, len(data) // 4)]
        qold, qnew = client_side(quarter, spec, schema)
        profile("(a) rows, client side", qold)
        profile("(b) columns, client side", qnew)
    results = [measure("(a) rows, client side (to_rows + row_upsert_param + serialize)", rows, old),
               measure("(b) columns, client side (build_request + serialize)", rows, new)]
    if not args.no_server:
        results += end_to_end(data, rows)
    results += import_paths(data, spec, rows)

    by = {r["path"].split(" ", 1)[0] + (" e2e" if "end to end" in r["path"] else ""): r for r in results}
    a, c = by["(a)"]["cpu_us_per_row"], by["(c)"]["cpu_us_per_row"]
    print("\n| path | CPU us/row | wall us/row | vs (a) CPU | vs (c) CPU | vs 257 us |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        cpu = r["cpu_us_per_row"]
        print(f"| {r['path']} | {cpu} | {r['wall_us_per_row']} | {cpu / a:.3f} | {cpu / c:.3f} | {cpu / 257:.3f} |")


if __name__ == "__main__":
    main()
