"""The guards under the exactly-once argument: what a 2.6 server refuses, who may write, how long to retry."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pymilvus import MilvusClient, MilvusException

from cluster.manifest import Lease, LeaseHeld, Store, target_key
from cluster.milvus.holder import CollectionHeld, claim, current_holder, release
from cluster.milvus.strict import DUPLICATE_PK_CODE, CheckedClient, journal_counts
from cluster.milvus.writer import is_transient, last_per_key
from cluster.retry import retry


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def upsert(self, collection: str, data: list[dict[str, object]], **_: object) -> None:
        self.calls.append(("upsert", [str(r["pk"]) for r in data]))

    def delete(self, collection: str, ids: list[str] | None = None, **_: object) -> None:
        self.calls.append(("delete", list(ids or [])))

    def close(self) -> None:
        pass


def test_a_request_repeating_a_key_is_refused_as_a_milvus_2_6_server_does(tmp_path: Path) -> None:
    inner = Recorder()
    client = CheckedClient(inner, str(tmp_path / "journal"))
    with pytest.raises(MilvusException) as info:
        client.upsert("docs", [{"pk": "k#0"}, {"pk": "k#1"}, {"pk": "k#0"}])
    assert info.value.code == DUPLICATE_PK_CODE and "'k#0'" in str(info.value) and not inner.calls
    assert not is_transient(info.value)  # a re-run would fail the same way: the request must never be built
    client.upsert("docs", [{"pk": "k#0"}, {"pk": "k#1"}])
    client.upsert("docs", [{"pk": "k#1"}])
    client.delete("docs", ids=["k#0"])
    client.close()
    assert journal_counts(str(tmp_path / "journal")) == {"k#0": 1, "k#1": 2}
    assert journal_counts(str(tmp_path / "journal"), op="delete") == {"k#0": 1}


def test_a_block_holding_one_key_twice_keeps_its_last_row() -> None:
    table = pa.table({"pk": ["a#0", "b#0", "a#0", "c#0", "b#0"], "v": [1, 2, 3, 4, 5]})
    out = last_per_key(table)
    assert out.column("pk").to_pylist() == ["a#0", "c#0", "b#0"] and out.column("v").to_pylist() == [3, 4, 5]
    same = pa.table({"pk": ["a#0", "b#0"], "v": [1, 2]})
    assert last_per_key(same) is same


@pytest.mark.parametrize("a, b", [
    ("http://127.0.0.1:19530", "http://localhost:19530/"),
    ("http://localhost", "tcp://127.0.0.1:19530"),
    ("https://Milvus.Example.com", "https://milvus.example.com:443"),
])
def test_the_lease_names_the_target_not_its_spelling(a: str, b: str) -> None:
    assert target_key(a, None, "docs") == target_key(b, "default", "docs")


def test_the_lease_still_tells_targets_apart(tmp_path: Path) -> None:
    assert target_key("http://127.0.0.1:19530", None, "docs") != target_key("http://127.0.0.1:19531", None, "docs")
    assert target_key("http://a:19530", None, "docs") != target_key("http://a:19530", "other", "docs")
    assert target_key(str(tmp_path / "m.db"), None, "docs") == target_key(str(tmp_path / "x" / ".." / "m.db"), None,
                                                                         "docs")


def test_a_manifest_commit_is_fenced_by_reading_the_lease(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "leases"))
    mine = Lease(store, "docs-x", {"run_id": "mine"}, ttl_s=60)
    mine.acquire()
    assert mine.verify() and mine.lost is None
    # Another run took the lease over (this one was presumed dead); the heartbeat has not noticed yet.
    record = store.get_json("docs-x.json")
    store.put_json("docs-x.json", {**record, "nonce": "someone-else", "run_id": "theirs"})
    assert not mine.verify() and "theirs" in str(mine.lost)


def test_a_collection_written_from_another_checkpoint_storage_is_refused(tmp_path: Path) -> None:
    from cluster.milvus import CollectionSpec, ensure_collection

    client = MilvusClient(str(tmp_path / "m.db"))
    try:
        ensure_collection(client, CollectionSpec(name="docs", dense_dim=4, has_sparse=False))
        first = {"run_id": "r1", "lease": "s3://a/leases/docs.json", "host": "h", "pid": 1, "ttl_s": 60}
        claim(client, "docs", first, clock=lambda: 1000.0)
        with pytest.raises(CollectionHeld) as info:  # another checkpoint storage, live heartbeat
            claim(client, "docs", {**first, "run_id": "r2", "lease": "s3://b/leases/docs.json"}, clock=lambda: 1030.0)
        assert isinstance(info.value, LeaseHeld) and "r1" in str(info.value) and "s3://b" in str(info.value)
        # the same storage: the lease there arbitrates; a stale holder is taken over
        claim(client, "docs", {**first, "run_id": "r3"}, clock=lambda: 1040.0)
        claim(client, "docs", {**first, "run_id": "r4", "lease": "s3://b/leases/docs.json"}, clock=lambda: 2000.0)
        assert current_holder(client, "docs")["run_id"] == "r4"
        release(client, "docs", {"run_id": "r4"})
        assert current_holder(client, "docs") is None
    finally:
        client.close()


def test_an_outage_is_retried_for_a_time_not_a_count() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    def down() -> None:
        now[0] += 1.0  # each failed call takes a second
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        retry(down, what="t", is_transient=lambda e: True, for_s=120, base_delay=0.5, max_delay=15, jitter=False,
              sleep=sleep, clock=lambda: now[0])
    assert 120 <= now[0] <= 120 + 1.0 + 1e-9  # gave up once the time was spent, not before
    assert max(sleeps) == 15 and len(sleeps) > 6  # more than the old fixed 6 tries


def test_a_writer_that_cannot_be_scheduled_names_what_it_asked_for(ray_local: None) -> None:
    from cluster.milvus import CollectionSpec
    from cluster.settings import ErrorsConfig, MilvusConfig
    from cluster.stages.write import WriterSettings
    from cluster.writers import WriterError, WriterPool

    settings = WriterSettings(milvus=MilvusConfig(uri="http://127.0.0.1:1"),
                              spec=CollectionSpec(name="docs", dense_dim=4, has_sparse=False),
                              errors=ErrorsConfig(uri=None), dead_letter_options={}, run_id="r", replaces_rows=False)
    pool = WriterPool(settings, 1, cpus=64, node_id=None, on_confirmed=lambda r: None, on_lost=lambda r: None,
                      start_timeout_s=2)
    try:
        with pytest.raises(WriterError, match=r"did not start within 2 s.*64 CPU.*cpus_per_writer"):
            pool.call_all("ping")
    finally:
        pool.close(graceful=False)
