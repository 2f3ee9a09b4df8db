"""The driver's stream never waits on object storage to record shards; recording stays fenced and ordered."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cluster.errors import LeaseLost
from cluster.manifest import Lease, Manifest, Store
from cluster.plan import Plan
from cluster.progress import RunTracker
from cluster.recorder import ShardRecorder
from cluster.source import Shard


class SlowStore(Store):
    """A checkpoint storage whose shard-record PUTs (segments) wait until the test opens the gate."""

    def __init__(self, uri: str, gate: threading.Event, started: threading.Event) -> None:
        super().__init__(uri)
        self.gate, self.started = gate, started

    def child(self, name: str) -> SlowStore:
        out = SlowStore(f"{self.uri}/{name}", self.gate, self.started)
        return out

    def put_json(self, rel: str, value: Any) -> None:
        if rel.startswith("records/"):
            self.started.set()
            assert self.gate.wait(60), "the test never opened the gate"
        super().put_json(rel, value)


def setup(tmp_path: Path, n: int) -> tuple[ShardRecorder, Manifest, Lease, threading.Event, threading.Event]:
    gate, started = threading.Event(), threading.Event()
    store = SlowStore(str(tmp_path / "state"), gate, started)
    lease = Lease(Store(str(tmp_path / "leases")), "docs", {"run_id": "mine"}, ttl_s=60)
    lease.acquire()
    manifest = Manifest(store, {"job": "recorder-test"})
    shards = [Shard(path=f"/src/part-{i:04d}.parquet", format="parquet", size=10, version="v1") for i in range(n)]
    the_plan = Plan(run_id="r1", shards=shards, spec=None, client=None, milvus=None, lease=lease, manifest=manifest)
    tracker = RunTracker(shards)
    for s in shards:
        tracker.shards[s.path].docs_total = 0  # done: nothing left to arrive
    return ShardRecorder(the_plan, tracker), manifest, lease, gate, started


def test_record_all_returns_while_object_storage_is_still_writing(tmp_path: Path) -> None:
    recorder, manifest, _, gate, started = setup(tmp_path, 50)
    paths = list(recorder.by_path)
    recorder.record_all(paths[:30])
    assert started.wait(30)  # the background thread is inside a PUT, held by the gate ...
    recorder.record_all(paths[30:])  # ... and queuing more does not wait for it
    assert recorder.queued == 50 and Manifest(Store(str(tmp_path / "state")), {"job": "recorder-test"}).records() == {}
    with pytest.raises(TimeoutError, match="still being written"):
        recorder.flush(timeout_s=0.2)
    gate.set()
    recorder.flush()
    assert sorted(manifest.records()) == paths and recorder.queued == 0 and recorder.written == 2
    recorder.close()


def test_the_records_queued_meanwhile_are_one_object(tmp_path: Path) -> None:
    """Checkpoints queued while a segment is being written go into the next segment together (one PUT)."""
    recorder, manifest, _, gate, started = setup(tmp_path, 300)
    paths = list(recorder.by_path)
    recorder.record_all(paths[:10])
    assert started.wait(30)  # the first segment is being written ...
    for k in range(10, 300, 10):  # ... while 29 more checkpoints queue their shards
        recorder.record_all(paths[k:k + 10])
    gate.set()
    recorder.flush()
    assert recorder.written == 2 and sorted(manifest.records()) == paths
    assert len(manifest.store.list("records", ".json")) == 2
    recorder.close()


def test_a_lease_lost_in_the_background_records_nothing_more_and_stops_the_run(tmp_path: Path) -> None:
    recorder, manifest, lease, gate, _ = setup(tmp_path, 10)
    gate.set()
    paths = list(recorder.by_path)
    recorder.record_all(paths[:4])
    recorder.flush()
    taken = lease.store.get_json(lease.rel)
    lease.store.put_json(lease.rel, {**taken, "nonce": "someone-else", "run_id": "theirs"})  # a takeover
    recorder.record_all(paths[4:])
    with pytest.raises(LeaseLost, match="theirs"):
        recorder.flush()
    with pytest.raises(LeaseLost):  # and at the stream loop's next check
        recorder.check_lease()
    assert sorted(manifest.records()) == paths[:4]  # fenced: nothing after the takeover
    recorder.close()
