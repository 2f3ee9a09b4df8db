"""bulk_import mode: the parquet files on S3 (moto), and the import job's polling with a fake transport."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.milvus.bulk import BulkFileWriter, parse_bulk_uri, run_import, s3_connect_param
from cluster.milvus.errors import BulkImportError
from cluster.milvus.rows import EMPTY_SPARSE_VALUE
from cluster.milvus.schema import CollectionSpec
from cluster.settings import MilvusConfig

META = {"lang": pa.string(), "year": pa.int64()}


def bulk_cfg(bucket: str, storage: dict[str, object], **kw: Any) -> MilvusConfig:
    return MilvusConfig(uri="http://milvus.example:19530", collection="docs", mode="bulk_import",
                        bulk_uri=f"s3://{bucket}/imports/run1", bulk_storage_options=dict(storage), **kw)


def read_files(storage: dict[str, object], bucket: str, files: list[list[str]]) -> pa.Table:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": storage["endpoint_url"]}, key=storage["key"],
                           secret=storage["secret"], skip_instance_cache=True)
    return pa.concat_tables([pq.read_table(f"{bucket}/{path}", filesystem=fs) for batch in files for path in batch])


def test_files_read_back(s3_server: dict[str, object], s3_bucket: str, make_batch) -> None:
    cfg = bulk_cfg(s3_bucket, s3_server)
    spec = CollectionSpec.from_config(cfg, dense_dim=16, has_sparse=True, metadata=META)
    batch = make_batch(30, errors={4: "bad"})
    idx, val = batch.column("sparse_indices").to_pylist(), batch.column("sparse_values").to_pylist()
    idx[7], val[7] = [], []
    batch = batch.set_column(batch.schema.get_field_index("sparse_indices"), "sparse_indices",
                             pa.array(idx, pa.list_(pa.int32())))
    batch = batch.set_column(batch.schema.get_field_index("sparse_values"), "sparse_values",
                             pa.array(val, pa.list_(pa.float32())))
    with BulkFileWriter(spec, cfg) as writer:
        assert writer.write(batch) == 29
        assert writer.write(make_batch(10, start=30)) == 10
    files = writer.close()
    assert files and all(p.startswith("imports/run1/") and p.endswith(".parquet") for f in files for p in f)

    table = read_files(s3_server, s3_bucket, files)
    assert table.schema.names == ["pk", "doc_id", "chunk_index", "text", "dense", "sparse", "lang", "year"]
    assert table.schema.field("dense").type == pa.list_(pa.float32())
    assert table.schema.field("sparse").type == pa.string()
    assert table.schema.field("chunk_index").type == pa.int32()
    assert table.num_rows == 39
    rows = {r["pk"]: r for r in table.to_pylist()}
    assert "d4#1" not in rows  # the error row is not written
    src = {r["pk"]: r for r in batch.to_pylist()}
    for pk in ("d0#0", "d13#1", "d29#2"):
        np.testing.assert_array_equal(np.float32(rows[pk]["dense"]), np.float32(src[pk]["dense"]))
        sparse = json.loads(rows[pk]["sparse"])
        assert sparse["indices"] == src[pk]["sparse_indices"]
        np.testing.assert_allclose(sparse["values"], src[pk]["sparse_values"], rtol=1e-7)
        assert (rows[pk]["doc_id"], rows[pk]["text"], rows[pk]["lang"], rows[pk]["year"]) == (
            src[pk]["doc_id"], src[pk]["text"], src[pk]["lang"], src[pk]["year"])
    assert json.loads(rows["d7#1"]["sparse"]) == {"indices": [0], "values": [pytest.approx(EMPTY_SPARSE_VALUE)]}


def test_small_chunks_make_several_files(s3_server: dict[str, object], s3_bucket: str, make_batch) -> None:
    cfg = bulk_cfg(s3_bucket, s3_server)
    spec = CollectionSpec.from_config(cfg, dense_dim=16, has_sparse=False)
    writer = BulkFileWriter(spec, cfg, chunk_mb=0)  # commit after every row
    writer.write(make_batch(3, sparse=False))
    files = writer.close()
    assert len(files) == 3
    assert read_files(s3_server, s3_bucket, files).column("pk").to_pylist() == ["d0#0", "d1#1", "d2#2"]


def test_missing_bucket_is_a_clear_error(s3_server: dict[str, object], make_batch) -> None:
    cfg = bulk_cfg("no-such-bucket", s3_server)
    spec = CollectionSpec.from_config(cfg, dense_dim=16, has_sparse=False)
    with pytest.raises(BulkImportError, match="bulk_uri s3://no-such-bucket/imports/run1 does not exist"):
        BulkFileWriter(spec, cfg)
    wrong_key = bulk_cfg("no-such-bucket", {**s3_server, "endpoint_url": "http://127.0.0.1:1"})
    with pytest.raises(BulkImportError, match="cannot reach the bucket"):
        BulkFileWriter(spec, wrong_key)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_failed_upload_is_not_silent(s3_server: dict[str, object], s3_bucket: str, make_batch) -> None:
    """pymilvus uploads in a thread that only logs its errors: the writer notices the missing file."""
    import s3fs

    cfg = bulk_cfg(s3_bucket, s3_server)
    writer = BulkFileWriter(CollectionSpec.from_config(cfg, dense_dim=16, has_sparse=False), cfg)
    writer.write(make_batch(2, sparse=False))
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]}, key=s3_server["key"],
                      secret=s3_server["secret"], skip_instance_cache=True).rmdir(s3_bucket)
    with pytest.raises(BulkImportError, match="could not be written or uploaded"):
        writer.close()


def test_storage_options() -> None:
    assert parse_bulk_uri("s3://bkt/a/b/") == ("bkt", "a/b")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        parse_bulk_uri("/local/path")
    p = s3_connect_param("bkt", {"endpoint_url": "https://minio.local:9000", "key": "k", "secret": "s"})
    assert (p._endpoint, p._secure, p._access_key, p._bucket_name) == ("minio.local:9000", (True,), "k", "bkt")


class FakeRest:
    """Answers create with a job id, then describe with the given states in turn."""

    def __init__(self, states: list[dict[str, Any]], create_error: Exception | None = None) -> None:
        self.states, self.create_error, self.calls = list(states), create_error, []

    def __call__(self, what: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((what, params))
        if what == "create":
            if self.create_error:
                raise self.create_error
            return {"code": 0, "data": {"jobId": "449"}}
        return {"code": 0, "data": self.states.pop(0) if len(self.states) > 1 else self.states[0]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def cfg_server(**kw: Any) -> MilvusConfig:
    return MilvusConfig(uri="http://milvus.example:19530", collection="docs", mode="bulk_import",
                        bulk_uri="s3://milvus-bucket/imports", **kw)


def test_import_polls_until_completed() -> None:
    rest, clock = FakeRest([{"state": "Pending", "progress": 0}, {"state": "Importing", "progress": 50},
                            {"state": "Completed", "progress": 100, "importedRows": 39}]), FakeClock()
    done = run_import(cfg_server(), [["imports/a/1.parquet"], ["imports/a/2.parquet"]], transport=rest,
                      poll_s=5, sleep=clock.sleep, clock=clock)
    assert done["importedRows"] == 39 and clock.now == 10
    assert rest.calls[0] == ("create", {"collection_name": "docs",
                                        "files": [["imports/a/1.parquet"], ["imports/a/2.parquet"]]})
    assert rest.calls[1:] == [("describe", {"job_id": "449"})] * 3


def test_import_failure_and_timeout() -> None:
    rest, clock = FakeRest([{"state": "Failed", "reason": "field dense: dim mismatch"}]), FakeClock()
    with pytest.raises(BulkImportError, match="job 449 into 'docs' failed: field dense: dim mismatch"):
        run_import(cfg_server(), [["f.parquet"]], transport=rest, sleep=clock.sleep, clock=clock)
    rest, clock = FakeRest([{"state": "Importing", "progress": 10}]), FakeClock()
    with pytest.raises(BulkImportError, match=r"did not finish in 60 s \(state 'Importing', progress 10%\)"):
        run_import(cfg_server(), [["f.parquet"]], transport=rest, timeout_s=60, poll_s=7, sleep=clock.sleep,
                   clock=clock)
    assert 60 <= clock.now < 70


def test_import_start_errors_hide_the_token() -> None:
    rest = FakeRest([], create_error=RuntimeError("401 for Bearer root:TopSecret1"))
    with pytest.raises(BulkImportError, match="cannot start the import") as info:
        run_import(cfg_server(token="root:TopSecret1"), [["f.parquet"]], transport=rest)
    assert "TopSecret1" not in str(info.value)
    with pytest.raises(BulkImportError, match="no files"):
        run_import(cfg_server(), [[]], transport=FakeRest([]))
    with pytest.raises(ValueError, match="bulk_import needs a Milvus server"):
        MilvusConfig(uri="./x.db", mode="bulk_import", bulk_uri="s3://b/p")
