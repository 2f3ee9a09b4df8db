"""The import REST client against the recording import server: files on S3 (moto), rows in a milvus-lite server."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from cluster.milvus.errors import BulkImportError, ImportJobFailed, ImportTimeout
from cluster.milvus.importfiles import ImportFile, ImportFiles, import_table
from cluster.milvus.imports import (
    MAX_FILES_PER_JOB,
    ImportApiError,
    ImportClient,
    describe_job,
    detail_paths,
    honours_idempotency_key,
)
from cluster.milvus.schema import CollectionSpec, ensure_collection
from embedder.storage import filesystem
from tests.import_server import ImportServer

pytestmark = pytest.mark.integration

META = {"lang": pa.string(), "year": pa.int64()}
_names = itertools.count()


@pytest.fixture()
def spec(milvus: MilvusClient) -> CollectionSpec:
    """A fresh, empty collection of the job's schema (dense 16, sparse, two metadata fields)."""
    spec = CollectionSpec(name=f"imp_{next(_names)}", dense_dim=16, has_sparse=True, metadata=META)
    ensure_collection(milvus, spec, lite=True)
    return spec


def upload(s3_server: dict[str, Any], bucket: str, spec: CollectionSpec, batches: list[pa.Table], name: str,
           tmp_path: Path, *, max_file_bytes: int = 1 << 30) -> list[ImportFile]:
    fs, root = filesystem(f"s3://{bucket}/imports/run1", s3_server)
    files = ImportFiles(spec, fs, root, name, max_file_bytes=max_file_bytes, scratch_dir=str(tmp_path / name))
    for i, batch in enumerate(batches):
        files.write(batch.drop_columns(["error"]), np.full(batch.num_rows, i, np.int32))
    return files.close()


def count(milvus: MilvusClient, collection: str) -> int:
    return milvus.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]


def no_sleep(_: float) -> None:
    pass


class FakeClock:
    """A monotonic clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def client_for(server: ImportServer, **kw: Any) -> ImportClient:
    opts: dict[str, Any] = {"token": server.token, "db_name": None, "sleep": no_sleep}
    opts.update(kw)
    return ImportClient(server.url, **opts)


@pytest.fixture()
def server(milvus: MilvusClient, s3_server: dict[str, Any], s3_bucket: str) -> Iterator[ImportServer]:
    with ImportServer(milvus=milvus, s3_options=s3_server, bucket=s3_bucket, steps=2) as srv:
        yield srv


def test_import_lands_every_row_with_its_vectors(server, milvus, spec, s3_server, s3_bucket, make_batch,
                                                 tmp_path) -> None:
    batches = [make_batch(40, seed=1), make_batch(25, start=40, seed=2)]
    files = upload(s3_server, s3_bucket, spec, batches, "w0", tmp_path, max_file_bytes=12_000)
    assert len(files) >= 2
    groups = [[f.path] for f in files]
    with client_for(server, db_name="default") as client:
        job_id = client.create(spec.name, groups, idempotency_key="run1-group0")
        job = client.wait(job_id, poll_s=0)

    assert job["state"] == "completed" and job["imported_rows"] == job["total_rows"] == 65
    assert job["files"] == groups and job["collection"] == spec.name
    assert count(milvus, spec.name) == 65
    create = server.calls("create")[0]
    assert create.headers["idempotency-key"] == "run1-group0"
    assert create.body == {"collectionName": spec.name, "files": groups, "dbName": "default"}
    states = [c.answer["data"]["state"] for c in server.calls("describe")]
    assert states == ["Pending", "Importing", "Completed"]

    source = import_table(pa.concat_tables(batches).drop_columns(["error"]), spec).to_pylist()
    pks = [source[0]["pk"], source[41]["pk"], source[64]["pk"]]
    got = {r["pk"]: r for r in milvus.get(spec.name, ids=pks, output_fields=["*"])}
    for want in (source[0], source[41], source[64]):
        row = got[want["pk"]]
        np.testing.assert_array_equal(np.float32(row["dense"]), np.float32(want["dense"]))
        assert (row["doc_id"], row["chunk_index"], row["text"], row["lang"], row["year"]) == (
            want["doc_id"], want["chunk_index"], want["text"], want["lang"], want["year"])
        sparse = json.loads(want["sparse"])
        assert {int(k): np.float32(v) for k, v in row["sparse"].items()} == {
            i: np.float32(v) for i, v in zip(sparse["indices"], sparse["values"])}


def test_honoured_idempotency_key_returns_the_same_job(server, milvus, spec, s3_server, s3_bucket, make_batch,
                                                       tmp_path) -> None:
    files = upload(s3_server, s3_bucket, spec, [make_batch(30)], "w0", tmp_path)
    groups = [[f.path] for f in files]
    with client_for(server) as client:
        first = client.create(spec.name, groups, idempotency_key="run1-g0")
        again = client.create(spec.name, groups, idempotency_key="run1-g0")  # e.g. after a crash
        assert again == first and len(server.jobs) == 1
        client.wait(first, poll_s=0)
        assert client.create(spec.name, groups, idempotency_key="run1-g0") == first  # after completion too
    assert len(server.jobs) == 1 and count(milvus, spec.name) == 30


def test_ignored_key_find_job_finds_the_first_job(milvus, spec, s3_server, s3_bucket, make_batch, tmp_path) -> None:
    files = upload(s3_server, s3_bucket, spec, [make_batch(20), make_batch(10, start=20)], "w0", tmp_path,
                   max_file_bytes=6_000)
    groups = [[f.path] for f in files]
    with ImportServer(milvus=milvus, s3_options=s3_server, bucket=s3_bucket, steps=3,
                      honour_idempotency_key=False) as server:
        clock = FakeClock()
        with client_for(server, sleep=clock.sleep, clock=clock) as client:
            first = client.create(spec.name, groups, idempotency_key="run1-g0")
            # the driver crashed before recording `first`; the re-run asks before creating again.
            # The job is still pending (no files named yet): find_job describes it until it names them.
            assert client.find_job(spec.name, groups) == first
            assert clock.now > 0
            assert client.find_job(spec.name, groups[:1]) is None  # other files: no match
            assert client.find_job(spec.name, list(reversed(groups))) == first  # order does not matter
            # this server ignores the key: a second create would have started a second job
            assert client.create(spec.name, groups, idempotency_key="run1-g0") != first
            assert len(server.jobs) == 2
            client.wait(first, poll_s=0)
    assert count(milvus, spec.name) == 30


def test_lost_create_answer_never_starts_a_second_job(milvus, spec, s3_server, s3_bucket, make_batch,
                                                      tmp_path) -> None:
    files = upload(s3_server, s3_bucket, spec, [make_batch(25)], "w0", tmp_path)
    groups = [[f.path] for f in files]
    with ImportServer(milvus=milvus, s3_options=s3_server, bucket=s3_bucket, steps=0,
                      honour_idempotency_key=False) as server:
        server.inject("create", status=502, after=True)  # the job is created, its answer lost
        with client_for(server) as client:
            job_id = client.create(spec.name, groups, idempotency_key="run1-g0")
            assert list(server.jobs) == [job_id]
            assert len(server.calls("create")) == 1 and server.calls("list")  # found, not created again
            client.wait(job_id, poll_s=0)
    assert count(milvus, spec.name) == 25

    # a server known to honour the key (>= 2.6.24): the retry just sends the key again
    more = upload(s3_server, s3_bucket, spec, [make_batch(5, start=25)], "w1", tmp_path)
    with ImportServer(milvus=milvus, s3_options=s3_server, bucket=s3_bucket, steps=0) as server:
        server.inject("create", status=502, after=True)
        with client_for(server, key_honoured=True) as client:
            job_id = client.create(spec.name, [[f.path] for f in more], idempotency_key="run1-g1")
            assert list(server.jobs) == [job_id] and not server.calls("list")
            assert [c.headers["idempotency-key"] for c in server.calls("create")] == ["run1-g1", "run1-g1"]
            client.wait(job_id, poll_s=0)
    assert count(milvus, spec.name) == 30


def test_failed_job_raises_with_the_reason_and_imports_nothing(server, milvus, spec, s3_server, s3_bucket,
                                                               make_batch, tmp_path) -> None:
    good = upload(s3_server, s3_bucket, spec, [make_batch(20)], "good", tmp_path)
    server.reset(fail_next="disk quota exhausted on the datanode")
    with client_for(server) as client:
        failed = client.create(spec.name, [[f.path] for f in good], idempotency_key="k1")
        with pytest.raises(ImportJobFailed, match="disk quota exhausted on the datanode") as failure:
            client.wait(failed, poll_s=0)
        assert failure.value.job_id == failed and failure.value.reason == "disk quota exhausted on the datanode"
        assert client.describe(failed)["state"] == "failed"

        # a job with one good file and one whose vectors have the wrong dimension: atomic, nothing lands
        bad_spec = CollectionSpec(name="other", dense_dim=8, has_sparse=True, metadata=META)
        bad = upload(s3_server, s3_bucket, bad_spec, [make_batch(5, dim=8, start=100)], "bad", tmp_path)
        mixed = client.create(spec.name, [[good[0].path], [bad[0].path]], idempotency_key="k2")
        with pytest.raises(BulkImportError, match="not aligned: expect dim=16, got 8") as err:
            client.wait(mixed, poll_s=0)
        assert "new idempotency key" in str(err.value)
        assert count(milvus, spec.name) == 0

        # the failed job keeps its key (Milvus >= 2.6.24): importing again takes a new one
        assert client.create(spec.name, [[f.path] for f in good], idempotency_key="k1") == failed
        again = client.create(spec.name, [[f.path] for f in good], idempotency_key="k1-attempt2")
        assert again != failed and client.wait(again, poll_s=0)["imported_rows"] == 20
    assert count(milvus, spec.name) == 20


def test_transient_failures_are_retried(server, milvus, spec, s3_server, s3_bucket, make_batch, tmp_path,
                                        caplog) -> None:
    caplog.set_level(logging.WARNING)
    files = upload(s3_server, s3_bucket, spec, [make_batch(10)], "w0", tmp_path)
    server.reset(steps=0)
    server.inject("create", status=503)  # lost on the way in: nothing created
    server.inject("describe", status=503, times=2)
    server.inject("list", status=200, code=8)  # Milvus rate limit in the envelope
    delays: list[float] = []
    with client_for(server, sleep=delays.append) as client:
        job_id = client.create(spec.name, [[f.path] for f in files], idempotency_key="k")
        assert len(server.jobs) == 1
        assert client.wait(job_id, poll_s=0)["state"] == "completed"
    assert [c.status for c in server.calls("create")] == [503, 200]
    assert [c.status for c in server.calls("list")] == [200, 200]  # the retried create asked first
    assert [c.status for c in server.calls("describe")][-3:] == [503, 503, 200]
    assert len(delays) >= 4 and "retrying in" in caplog.text
    assert count(milvus, spec.name) == 10


def test_token_is_sent_and_never_shown(milvus, spec, s3_server, s3_bucket, make_batch, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    files = upload(s3_server, s3_bucket, spec, [make_batch(5)], "w0", tmp_path)
    groups = [[f.path] for f in files]
    with ImportServer(milvus=milvus, s3_options=s3_server, bucket=s3_bucket, token="root:S3cretT0ken",
                      steps=0) as server:
        with client_for(server, token="root:Wr0ngS3cret") as client:
            with pytest.raises(BulkImportError) as err:
                client.create(spec.name, groups, idempotency_key="k")
            assert "401" in str(err.value) and "token" in str(err.value)
            assert "Wr0ngS3cret" not in str(err.value) and "Wr0ngS3cret" not in repr(client)
        server.inject("describe", status=503, code=2)
        with client_for(server) as client:
            job_id = client.create(spec.name, groups, idempotency_key="k")
            client.wait(job_id, poll_s=0)
    assert {c.headers.get("authorization") for c in server.calls("create")} == {"Bearer root:Wr0ngS3cret",
                                                                               "Bearer root:S3cretT0ken"}
    assert "retrying in" in caplog.text
    assert "S3cretT0ken" not in caplog.text and "Wr0ngS3cret" not in caplog.text
    assert count(milvus, spec.name) == 5


def test_unknown_job_old_servers_and_refused_requests(server, spec) -> None:
    with client_for(server) as client:
        with pytest.raises(ImportApiError, match="does not exist") as err:
            client.describe("457000000000009999")
        assert err.value.code == 2100 and len(server.calls("describe")) == 1  # not retried

        server.inject("describe", status=404)  # a server without /describe: /get_progress
        with pytest.raises(ImportApiError, match="does not exist"):
            client.describe("457000000000009999")
        assert len(server.calls("get_progress")) == 1

        with pytest.raises(ImportApiError, match="collection not found"):
            client.create("no_such_collection", [["imports/x.parquet"]], idempotency_key="k")
        with pytest.raises(ValueError, match=f"at most {MAX_FILES_PER_JOB}"):
            client.create(spec.name, [[f"f{i}.parquet"] for i in range(MAX_FILES_PER_JOB + 1)], idempotency_key="k")
        with pytest.raises(ValueError, match="printable ASCII"):
            client.create(spec.name, [["f.parquet"]], idempotency_key="schlüssel")
    with client_for(server, db_name="analytics") as client:
        with pytest.raises(ImportApiError, match="database not found"):
            client.list_jobs(spec.name)
    assert server.calls("list")[-1].body == {"collectionName": spec.name, "dbName": "analytics"}


def test_wait_gives_up_after_its_timeout(milvus, spec, s3_server, s3_bucket, make_batch, tmp_path) -> None:
    files = upload(s3_server, s3_bucket, spec, [make_batch(5)], "w0", tmp_path)
    with ImportServer(milvus=milvus, s3_options=s3_server, bucket=s3_bucket, steps=1000) as server:
        clock = FakeClock()
        with client_for(server) as client:
            job_id = client.create(spec.name, [[f.path] for f in files], idempotency_key="k")
            with pytest.raises(ImportTimeout, match="may still be running"):
                client.wait(job_id, poll_s=30, timeout_s=300, sleep=clock.sleep, clock=clock)
    assert 10 <= len(server.calls("describe")) <= 12 and count(milvus, spec.name) == 0


def test_describe_answers_are_normalized() -> None:
    legacy = describe_job({"jobId": "4498", "state": "ImportCompleted", "progress": 100, "importedRows": "7",
                           "totalRows": 7, "details": [{"fileName": 'id:4499 paths:"/a/1.parquet" '}]})
    assert legacy["state"] == "completed" and legacy["imported_rows"] == 7 and legacy["files"] == [["a/1.parquet"]]
    assert describe_job({"state": "PreImporting"}, "9")["state"] == "importing"
    assert describe_job({"state": "Pending"}, "9")["job_id"] == "9"
    assert detail_paths("[a/1.parquet b/2.parquet]") == ["a/1.parquet", "b/2.parquet"]
    assert [honours_idempotency_key(v) for v in ("v2.6.23", "v2.6.24", "3.0.1", "v3.0.2", "2.5.14")] == [
        False, True, False, True, False]


def test_a_file_milvus_would_refuse_fails_the_job(server, milvus, spec, s3_server, s3_bucket, make_batch,
                                                   tmp_path) -> None:
    """The server's checks are real: an extra column, or a fixed_size_list vector, fail the job."""
    fs, _ = filesystem(f"s3://{s3_bucket}", s3_server)
    table = import_table(make_batch(3).drop_columns(["error"]), spec)
    extra = table.append_column("n_tokens", pa.array([1, 2, 3], pa.int32()))
    fixed = table.set_column(table.schema.get_field_index("dense"), "dense",
                             table.column("dense").cast(pa.list_(pa.float32(), 16)))
    server.reset(steps=0)
    with client_for(server) as client:
        for name, bad, reason in (("extra", extra, "n_tokens is not in schema"), ("fixed", fixed, "type mis-match")):
            with fs.open(f"{s3_bucket}/bad/{name}.parquet", "wb") as f:
                pq.write_table(bad, f)
            job_id = client.create(spec.name, [[f"bad/{name}.parquet"]], idempotency_key=name)
            with pytest.raises(BulkImportError, match=reason):
                client.wait(job_id, poll_s=0)
    assert count(milvus, spec.name) == 0
