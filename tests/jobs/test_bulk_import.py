"""milvus.mode bulk_import end to end, killed after its first import job and resumed.

No Milvus server with import runs here: the import REST API is the recording server of
tests/import_server.py (Milvus' documented contract), which reads the parquet files the writers
uploaded to S3 (moto) and inserts their rows into a ``milvus-lite server`` the job also writes
its schema to. Import groups of two shards are submitted as they finish; the run is SIGKILLed
once a job completed; the re-run must not import any file twice and must end with every chunk
exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from cluster.contract import chunk_pk
from tests.import_server import ImportServer
from tests.reliability.conftest import config_file, kill_group, run_in_ray, start_job
from tests.servers import LiteServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def lite(tmp_path: Path) -> Iterator[LiteServer]:
    server = LiteServer(tmp_path / "milvus-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def rows_in(client: MilvusClient) -> list[dict[str, object]]:
    client.load_collection("docs")
    it = client.query_iterator("docs", batch_size=1000, filter="", output_fields=["pk", "doc_id", "chunk_index"])
    out: list[dict[str, object]] = []
    while batch := it.next():
        out.extend(batch)
    it.close()
    return out


def test_bulk_resume_imports_nothing_twice(
        tmp_path: Path, tiny_m3_dir: Path, lite: LiteServer, s3_server: dict[str, object], s3_bucket: str,
        ray_local: None) -> None:
    honour_key = True  # servers that ignore the key: tests/cluster/milvus/test_imports.py (find_job)
    src = tmp_path / "docs"
    src.mkdir()
    ids = []
    for k in range(16):
        part = [f"s{k}-d{i}" for i in range(15)]
        ids += part
        pq.write_table(pa.table({"id": part, "text": [f"Document {d}: routers, coffee, bicycles." for d in part]}),
                       src / f"part-{k}.parquet")
    client = MilvusClient(lite.uri)
    server = ImportServer(milvus=client, s3_options=dict(s3_server), bucket=s3_bucket, steps=2,
                          honour_idempotency_key=honour_key).start()
    try:
        sections = {
            "source": {"uri": str(src)},
            "model": {"name": str(tiny_m3_dir), "precision": "fp32"},
            "batch": {"max_tokens": 1024}, "chunking": {"overlap": 4},
            "cluster": {"workers": 1, "writers": 2, "rows_per_task": 8},
            "milvus": {"uri": lite.uri, "collection": "docs", "mode": "bulk_import",
                       "bulk_uri": f"s3://{s3_bucket}/imports", "bulk_storage_options": dict(s3_server),
                       "import_uri": server.url, "import_group_shards": 2, "import_poll_s": 0.2},
            "checkpoint": {"uri": str(tmp_path / "state"), "record_every_s": 1},
            "errors": {"uri": str(tmp_path / "errors")},
            "log_every_s": 2,
        }
        cfg = config_file(tmp_path, sections)
        log = tmp_path / "log-killed.txt"
        proc = start_job(cfg, tmp_path / "summary-killed.json", log)
        try:
            deadline = time.monotonic() + 240
            while not any(j.state == "Completed" for j in list(server.jobs.values())):
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "no import job completed in time"
                time.sleep(0.2)
        finally:
            kill_group(proc)  # SIGKILL: the driver, its writers and its local Ray
        completed = sum(j.state == "Completed" for j in list(server.jobs.values()))
        assert completed < 8, "the kill came too late to test a resume"
        first_jobs = dict(server.jobs)

        code, summary, text = run_in_ray(cfg, tmp_path, "resume")
        assert code == 0, text[-3000:]
        assert summary["shards_skipped"] + summary["shards_done"] == 16 and summary["shards_skipped"] >= 2
        assert "resuming import group" in text or summary["shards_skipped"] >= 2

        # No file was imported twice, and every completed job is one of a distinct set of files.
        done = [j for j in server.jobs.values() if j.state == "Completed"]
        files = [f for j in done for group in j.files for f in group]
        assert len(files) == len(set(files))
        assert sum(j.imported_rows for j in done) == len(ids)
        assert all(first_jobs[j].state == "Completed" or first_jobs[j].files == server.jobs[j].files
                   for j in first_jobs)
        rows = rows_in(client)
        assert len(rows) == len({r["pk"] for r in rows}) == len(ids)
        assert {r["pk"] for r in rows} == {chunk_pk(d, 0) for d in ids}
        creates = server.calls("create")
        if honour_key:  # a re-sent key returned its first job instead of importing again
            keys = [c.headers.get("idempotency-key") for c in creates]
            assert len(set(keys)) == len(server.jobs)
    finally:
        server.stop()
        client.close()
