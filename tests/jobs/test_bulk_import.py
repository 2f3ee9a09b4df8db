"""milvus.mode bulk_import end to end: killed with import groups in flight, resumed while the import API is
down (exit 1, nothing changes), resumed once it is back, then the same command again (refused, exit 2).

No Milvus server with import runs here: the import REST API is the recording server of
tests/import_server.py (Milvus' documented contract), which reads the parquet files the writers
uploaded to S3 (moto) and inserts their rows into a ``milvus-lite server`` the job also writes
its schema to. The server ignores ``Idempotency-Key``, as Milvus before 2.6.24 does: a resumed
job is known only by its id in the manifest, or found in the server's job list by its files.
(Servers that honour the key: tests/cluster/test_bulkimport.py and tests/cluster/milvus/test_imports.py.)
Import groups of two shards are submitted as they finish; the run is SIGKILLed once a job
completed and another is in flight. No file may be imported twice, and every chunk must end up
in the collection exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from cluster.contract import chunk_pk
from embedder.storage import filesystem
from tests.import_server import ImportServer
from tests.reliability.conftest import config_file, kill_group, run_in_ray, session_ray_env, start_job
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


def recorded_groups(state: Path) -> dict[str, dict[str, object]]:
    """The import groups the manifest records (imports/<group>.json), by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(state.glob("*/imports/*.json"))}


def test_bulk_resume_imports_nothing_twice(
        tmp_path: Path, tiny_m3_dir: Path, lite: LiteServer, s3_server: dict[str, object], s3_bucket: str,
        ray_local: None) -> None:
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
                          honour_idempotency_key=False).start()
    try:
        sections = {
            "source": {"uri": str(src)},
            "model": {"name": str(tiny_m3_dir), "precision": "fp32"},
            "batch": {"max_tokens": 1024}, "chunking": {"overlap": 4},
            "cluster": {"workers": 1, "writers": 2, "rows_per_task": 8, "ship_code": False},
            "milvus": {"uri": lite.uri, "collection": "docs", "mode": "bulk_import",
                       "bulk_uri": f"s3://{s3_bucket}/imports", "bulk_storage_options": dict(s3_server),
                       "import_uri": server.url, "import_group_shards": 2, "import_poll_s": 0.2},
            "checkpoint": {"uri": str(tmp_path / "state"), "record_every_s": 1},
            "errors": {"uri": str(tmp_path / "errors")},
            "log_every_s": 2,
        }
        cfg = config_file(tmp_path, sections)
        log = tmp_path / "log-killed.txt"
        proc = start_job(cfg, tmp_path / "summary-killed.json", log, session_ray_env())  # joins this session's Ray
        try:
            deadline = time.monotonic() + 600  # only against a hang
            while not any(j.state == "Completed" for j in list(server.jobs.values())):
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "no import job completed in time"
                time.sleep(0.2)
            # From now on no job can be seen completing (describes are lost); once another group's job
            # exists, the kill leaves at least that group recorded (the run may also stop by itself, exit 1).
            server.inject("describe", status=503, times=10**6)
            while all(j.state == "Completed" for j in list(server.jobs.values())) and proc.poll() is None:
                assert time.monotonic() < deadline, "no second import job in time"
                time.sleep(0.1)
        finally:
            kill_group(proc)  # SIGKILL: the driver (Ray ends its writers)
        server.reset()
        before = server.snapshot()
        assert sum(state == "Completed" for state, _ in before.values()) < 8, "the kill came too late"
        groups = recorded_groups(tmp_path / "state")
        assert groups, log.read_text(errors="replace")[-3000:]
        fs, _ = filesystem(f"s3://{s3_bucket}", dict(s3_server))
        uris = [u for g in groups.values() for u in g["uris"]]  # type: ignore[attr-defined]
        assert uris and all(fs.exists(u) for u in uris)

        # The import API is unreachable: the re-run stops (exit 1) and changes nothing.
        server.stop()
        code, _, text = run_in_ray(cfg, tmp_path, "api-down")
        assert code == 1, text[-3000:]
        assert "stay recorded" in text and "ConnectionError" in text
        assert recorded_groups(tmp_path / "state") == groups
        assert all(fs.exists(u) for u in uris) and server.snapshot() == before

        # The API is back: the recorded groups complete, the rest is embedded and imported.
        server.start()
        code, summary, text = run_in_ray(cfg, tmp_path, "resume")
        assert code == 0, text[-3000:]
        assert "resuming import group" in text
        assert summary["shards_skipped"] + summary["shards_done"] == 16 and summary["shards_skipped"] >= 2
        assert not recorded_groups(tmp_path / "state") and not any(fs.exists(u) for u in uris)

        # No file was imported twice; the jobs of the killed run were waited for, not created again.
        per_file = server.imports_per_file()
        assert max(per_file.values()) == 1, per_file
        done = [j for j in server.jobs.values() if j.state == "Completed"]
        assert sum(j.imported_rows for j in done) == len(ids)
        assert all(server.jobs[j].state == "Completed" for j in before)
        rows = rows_in(client)
        assert len(rows) == len({r["pk"] for r in rows}) == len(ids)
        assert {r["pk"] for r in rows} == {chunk_pk(d, 0) for d in ids}

        # The same command once more: refused (exit 2), saying why, nothing imported.
        jobs = len(server.jobs)
        code, _, text = run_in_ray(cfg, tmp_path, "again")
        assert code == 2, text[-3000:]
        assert "previous full bulk_import run of this job finished" in text
        assert f"already holds its rows ({len(ids)} rows; the run recorded {len(ids)} chunks)" in text
        assert "manifest accounts for" not in text and len(server.jobs) == jobs
    finally:
        server.stop()
        client.close()
