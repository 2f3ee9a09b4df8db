"""Import groups (cluster/bulkimport.py) against the recording import server: what settles a group, and what not.

The writers are stood in for by :class:`FakeWriters` (real import files on S3, incarnations that
change on a restart, ``close_group`` as the writer actor answers it); the driver's records by a
:class:`~cluster.progress.RunTracker` fed records as the writer pool confirms them. The server
checks every file against the collection but inserts nothing (``insert=False``): what was
imported is read from its jobs (imported rows, imports per file).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pymilvus import MilvusClient

from cluster.bulkimport import ImportGroups, resume_imports
from cluster.manifest import Manifest, Store
from cluster.milvus.errors import ImportApiError, ImportTimeout
from cluster.milvus.importfiles import ImportFiles
from cluster.milvus.imports import ImportClient
from cluster.milvus.schema import CollectionSpec, ensure_collection
from cluster.progress import RunTracker
from cluster.settings import MilvusConfig
from cluster.source import Shard
from embedder.storage import filesystem
from tests.cluster.milvus.conftest import _batch
from tests.import_server import ImportServer

pytestmark = pytest.mark.integration

META = {"lang": pa.string(), "year": pa.int64()}
ROWS = 5  # chunks per shard
_runs = itertools.count()


@pytest.fixture(scope="module")
def spec(milvus: MilvusClient) -> CollectionSpec:
    """One collection for the module: the server checks files against it and inserts nothing."""
    spec = CollectionSpec(name="groups", dense_dim=16, has_sparse=True, metadata=META)
    ensure_collection(milvus, spec, lite=True)
    return spec


@pytest.fixture()
def server(milvus: MilvusClient, s3_server: dict[str, Any], s3_bucket: str) -> Iterator[ImportServer]:
    with ImportServer(milvus=milvus, s3_options=s3_server, bucket=s3_bucket, steps=2, insert=False) as srv:
        yield srv


def no_sleep(_: float) -> None:
    pass


class FakeWriters:
    """The writer pool as :class:`ImportGroups` sees it: ``slots`` with incarnations, ``call_all('close_group')``.

    Each writer holds its own import files per group (real parquet files uploaded to S3 on close);
    a restart gives the writer a new incarnation and loses the files it held, as a dead actor does.
    """

    def __init__(self, n: int, spec: CollectionSpec, root: str, s3: dict[str, Any], scratch: Path) -> None:
        self.spec, self.scratch = spec, scratch
        self.fs, self.root = filesystem(root, s3)
        self.slots = [SimpleNamespace(incarnation=f"w{i}-0") for i in range(n)]
        self.files: dict[tuple[int, int], ImportFiles] = {}
        self.written = 0

    def write(self, writer: int, group: int, tag: int, n: int) -> None:
        key = (writer, group)
        if key not in self.files:
            self.files[key] = ImportFiles(self.spec, self.fs, self.root,
                                          f"g{group:05d}-w{writer:03d}-{self.slots[writer].incarnation}",
                                          max_file_bytes=1 << 20, scratch_dir=str(self.scratch))
        batch = _batch(n, start=self.written).drop_columns(["error"])
        self.written += n
        self.files[key].write(batch, np.full(n, tag, np.int32))

    def restart(self, writer: int) -> None:
        inc = self.slots[writer].incarnation
        self.slots[writer].incarnation = f"w{writer}-{int(inc.rsplit('-', 1)[1]) + 1}"
        for key in [k for k in self.files if k[0] == writer]:
            del self.files[key]

    def call_all(self, method: str, group: int, drop: list[int]) -> list[dict[str, Any]]:
        assert method == "close_group"
        out = []
        for i, slot in enumerate(self.slots):
            files = self.files.pop((i, group), None)
            done = [] if files is None else files.close(drop_tags=frozenset(drop))
            out.append({"incarnation": slot.incarnation, "writer": i, "files": [
                {"uri": f.uri, "path": f.path, "rows": f.rows, "bytes": f.bytes, "tag_rows": f.tag_rows}
                for f in done]})
        return out


class Harness:
    """A run's driver side: plan, manifest, tracker, writers, import groups."""

    def __init__(self, tmp_path: Path, server: ImportServer, spec: CollectionSpec, s3: dict[str, Any], bucket: str,
                 *, shards: int, group_shards: int, writers: int = 2, manifest: Manifest | None = None,
                 paths: list[str] | None = None, **milvus: Any) -> None:
        self.server = server
        self.cfg = SimpleNamespace(milvus=MilvusConfig(
            uri="http://127.0.0.1:19530", collection=spec.name, mode="bulk_import",
            bulk_uri=f"s3://{bucket}/imports", bulk_storage_options=dict(s3), import_uri=server.url,
            import_group_shards=group_shards, import_poll_s=0.0, **milvus))
        self.manifest = manifest or Manifest(Store(str(tmp_path / "state")), {"test": tmp_path.name})
        paths = paths or [f"/data/part-{k:02d}.parquet" for k in range(shards)]
        self.shards = [Shard(path=p, format="parquet", size=100, version="mtime:1") for p in paths]
        self.plan = SimpleNamespace(manifest=self.manifest, run_id=f"run{next(_runs)}", shards=self.shards,
                                    milvus=SimpleNamespace(uri=server.url, token=None, db_name=None))
        self.tracker = RunTracker(self.shards)
        self.groups = ImportGroups(self.cfg, self.plan, self.tracker, record=self.record, client=self.client())
        self.writers = FakeWriters(writers, spec, self.groups.root, s3, tmp_path / f"scratch-{self.plan.run_id}")
        self.groups.pool = self.writers

    def client(self, **kw: Any) -> ImportClient:
        return ImportClient(self.server.url, token=None, db_name=None, sleep=no_sleep, attempts=2, **kw)

    def record(self, paths: list[str]) -> None:
        self.manifest.mark_done([(next(s for s in self.shards if s.path == path),
                                  self.tracker.shards[path].manifest_counts(), None) for path in paths])

    def embed(self, k: int, writers: tuple[int, ...] = (0, 1)) -> str:
        """Shard k's rows go to the given writers; the shard's records are confirmed."""
        path = self.shards[k].path
        g = self.groups.group_of[path]
        per = [ROWS // len(writers) + (1 if i < ROWS % len(writers) else 0) for i in range(len(writers))]
        for w, n in zip(writers, per):
            if n:
                self.writers.write(w, g, self.groups.tag_of[path], n)
        self.tracker.add({"shards": {path: {"docs_seen": ROWS, "chunks_seen": ROWS, "chunks_expected": ROWS,
                                            "chunks_ok": ROWS, "rows_written": ROWS, "docs_total": ROWS,
                                            "error": None, "info": {}}},
                          "languages": {}, "rejects": 0, "reject_samples": []})
        return path

    def recorded(self) -> set[str]:
        return {p for p, r in self.manifest.records().items() if self.manifest.done(r)}

    def files_exist(self, uris: list[str]) -> list[bool]:
        fs, _ = filesystem(uris[0], self.cfg.milvus.bulk_storage_options)
        return [fs.exists(filesystem(u, self.cfg.milvus.bulk_storage_options)[1]) for u in uris]


def imported_once(server: ImportServer) -> int:
    """Rows imported by completed jobs; fails when a file was imported twice."""
    per_file = server.imports_per_file()
    assert per_file and max(per_file.values()) == 1, per_file
    return sum(j.imported_rows for j in server.jobs.values() if j.state == "Completed")


@pytest.mark.parametrize("honour_key", [True, False], ids=["key-honoured", "key-ignored"])
def test_api_down_keeps_groups(tmp_path, server, spec, s3_server, s3_bucket, honour_key) -> None:
    """An unreachable import API (in the run, then in the next run) changes nothing; once back, the groups
    complete and no file is imported twice (bucket names come from the test's name: keep it short)."""
    server.reset(honour_idempotency_key=honour_key, steps=3)
    h = Harness(tmp_path, server, spec, s3_server, s3_bucket, shards=4, group_shards=2)
    h.groups.settled([h.embed(k) for k in range(4)])  # two groups closed, their jobs created (pending)
    assert len(server.jobs) == 2 and not h.recorded()

    server.stop()  # the import API is unreachable: during the run...
    with pytest.raises(ImportApiError, match="ConnectionError"):
        h.groups.poll()
    groups = h.manifest.import_groups()
    assert [len(g["jobs"]) for g in groups] == [1, 1] and all(g["jobs"][0]["job_id"] for g in groups)
    uris = [u for g in groups for u in g["uris"]]
    assert all(h.files_exist(uris))

    # ...the driver died between creating the second job and recording its id...
    lost = groups[1]
    lost["jobs"][0]["job_id"] = None
    h.manifest.put_import_group(lost)

    # ...and the next run starts while the API is still unreachable: it stops (exit 1), changing nothing
    with pytest.raises(ImportApiError, match="ConnectionError"):
        resume_imports(h.cfg, h.manifest, h.plan, client=h.client(), sleep=no_sleep)
    assert h.manifest.import_groups() == groups and all(h.files_exist(uris)) and not h.recorded()
    assert len(server.jobs) == 2

    server.start()  # the API is back: the groups complete, each file imported once (found, not created again)
    assert resume_imports(h.cfg, h.manifest, h.plan, client=h.client(), sleep=no_sleep) == 2
    assert h.recorded() == {s.path for s in h.shards} and not h.manifest.import_groups()
    assert not any(h.files_exist(uris))
    assert len(server.jobs) == 2 and imported_once(server) == 4 * ROWS
    if not honour_key:  # the job without an id was found in the server's job list by its files
        assert server.calls("list")


def test_a_job_past_its_timeout_stays_recorded(tmp_path, server, spec, s3_server, s3_bucket) -> None:
    server.reset(steps=10**6)  # never finishes
    h = Harness(tmp_path, server, spec, s3_server, s3_bucket, shards=2, group_shards=2, import_timeout_s=0.0)
    h.groups.settled([h.embed(0), h.embed(1)])
    with pytest.raises(ImportTimeout):
        h.groups.finish(set())
    with pytest.raises(ImportTimeout, match="may still be running"):
        resume_imports(h.cfg, h.manifest, h.plan, client=h.client(), sleep=no_sleep)
    [group] = h.manifest.import_groups()
    assert all(h.files_exist(group["uris"])) and not h.recorded() and len(server.jobs) == 1


def test_a_failed_job_fails_its_group_only_and_the_next_run_redoes_it(
        tmp_path, server, spec, s3_server, s3_bucket) -> None:
    h = Harness(tmp_path, server, spec, s3_server, s3_bucket, shards=6, group_shards=2)
    h.groups.settled([h.embed(0), h.embed(1)])
    bad = h.manifest.import_groups()[0]
    server.fail_files = {p: "disk quota exceeded on the datanode" for j in bad["jobs"] for p in j["files"]}
    h.groups.settled([h.embed(k) for k in range(2, 6)])
    h.groups.finish(set())  # no exception: the other groups complete

    paths = [s.path for s in h.shards]
    assert h.recorded() == set(paths[2:])
    assert [h.tracker.shards[p].lost for p in paths] == [True, True] + [False] * 4  # the run ends incomplete
    assert not h.manifest.import_groups() and not any(h.files_exist(bad["uris"]))
    assert imported_once(server) == 4 * ROWS

    # the next run embeds the failed group's shards again (new files, new keys) and imports them
    server.fail_files = {}
    again = Harness(tmp_path, server, spec, s3_server, s3_bucket, shards=2, group_shards=2, manifest=h.manifest,
                    paths=paths[:2])
    again.groups.settled([again.embed(0), again.embed(1)])
    again.groups.finish(set())
    assert h.recorded() == set(paths) and imported_once(server) == 6 * ROWS


def test_a_failed_job_of_a_resumed_group_drops_that_group_only(tmp_path, server, spec, s3_server, s3_bucket) -> None:
    h = Harness(tmp_path, server, spec, s3_server, s3_bucket, shards=4, group_shards=2)
    h.groups.settled([h.embed(k) for k in range(4)])  # recorded, jobs pending; the driver dies here
    bad, good = h.manifest.import_groups()
    server.fail_files = {p: "file is corrupted" for p in bad["jobs"][0]["files"]}
    assert resume_imports(h.cfg, h.manifest, h.plan, client=h.client(), sleep=no_sleep) == 1
    assert h.recorded() == {s["path"] for s in good["shards"]}  # the others are embedded again by this run
    assert not h.manifest.import_groups() and not any(h.files_exist(bad["uris"] + good["uris"]))


def test_running_jobs_are_capped(tmp_path, server, spec, s3_server, s3_bucket) -> None:
    server.reset(steps=3, max_running_jobs=2)  # the server refuses a third running job
    h = Harness(tmp_path, server, spec, s3_server, s3_bucket, shards=6, group_shards=1, import_max_running_jobs=2)
    h.groups.settled([h.embed(k) for k in range(6)])  # six groups closed at once
    assert len(server.jobs) == 2 and len(h.manifest.import_groups()) == 6  # all recorded, two created
    with pytest.raises(ImportApiError, match="number of jobs has reached the limit"):  # what more would meet
        h.client().create(spec.name, [[p] for p in h.manifest.import_groups()[2]["jobs"][0]["files"]],
                          idempotency_key="one-too-many")
    h.groups.finish(set())
    assert server.max_running == 2 and len(server.jobs) == 6
    assert [c.answer["code"] for c in server.calls("create")] == [0, 0, 2101, 0, 0, 0, 0]  # only the test's was refused
    assert h.recorded() == {s.path for s in h.shards} and imported_once(server) == 6 * ROWS


def test_a_writer_restart_drops_only_the_groups_open_at_the_time(tmp_path, server, spec, s3_server, s3_bucket) -> None:
    server.reset(steps=0)
    h = Harness(tmp_path, server, spec, s3_server, s3_bucket, shards=8, group_shards=2)
    paths = [s.path for s in h.shards]
    h.groups.settled([h.embed(0), h.embed(1)])  # group 0: both writers

    h.writers.restart(0)  # before group 1 received anything
    h.groups.settled([h.embed(2), h.embed(3)])  # group 1: written by writer 0's new incarnation and writer 1

    h.embed(4, writers=(1,))  # group 2 is open (rows confirmed) when writer 1 restarts: its part of the files is lost
    h.groups.settled([])
    h.writers.restart(1)
    h.embed(5, writers=(0,))
    h.groups.settled([paths[4], paths[5]])

    h.groups.settled([h.embed(6), h.embed(7)])  # group 3: after the restart
    h.groups.finish(set())
    assert h.recorded() == set(paths[:4] + paths[6:])
    assert [h.tracker.shards[p].lost for p in paths[4:6]] == [True, True]
    assert imported_once(server) == 6 * ROWS and len(server.jobs) == 3


def test_a_shard_changed_since_it_was_imported_is_refused(tmp_path: Path, tiny_m3_dir: Path) -> None:
    """Before: a resumed full bulk run imported the new version of a recorded shard beside its old rows."""
    import pyarrow.parquet as pq

    from cluster.manifest import job_identity
    from cluster.plan import plan
    from jobs.config import load_config
    from tests.jobs.conftest import write_config
    from tests.servers import LiteServer

    src = tmp_path / "docs"
    src.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["first", "second"]}), src / "a.parquet")
    server = LiteServer(tmp_path / "lite")
    server.start()
    try:
        cfg = load_config(write_config(
            tmp_path / "job.yaml", source={"uri": str(src)}, model={"name": str(tiny_m3_dir), "precision": "fp32"},
            milvus={"uri": server.uri, "collection": "docs", "mode": "bulk_import", "bulk_uri": "s3://b/imports"},
            checkpoint={"uri": str(tmp_path / "state")}))
        manifest = Manifest(Store(cfg.checkpoint.uri), job_identity(cfg))
        shard = Shard(path=str(src / "a.parquet"), format="parquet", size=1, version="as imported")
        manifest.mark_done([(shard, {"docs": 2, "chunks": 2}, None)])  # imported, then the file changed
        with pytest.raises(ValueError, match=r"changed since this bulk_import run imported them.*jobs.reindex"):
            plan(cfg)
    finally:
        server.stop()
