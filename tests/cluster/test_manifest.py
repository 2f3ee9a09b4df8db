"""The manifest's storage (atomic, conditional, corruption reported), the lease on S3, id-file set operations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cluster.manifest import Lease, LeaseHeld, ManifestCorrupt, Store
from cluster.manifest.ids import distinct_count, locate, present, read_table, shard_ids, write_table


def test_writes_are_whole_and_conditional(store: Store) -> None:
    store.put_json("a/x.json", {"n": 1})
    store.put_json("a/x.json", {"n": 2})
    assert store.get_json("a/x.json") == {"n": 2} and store.get_json("a/missing.json") is None
    assert store.list("a", ".json") == ["x.json"]  # no temporary file left behind
    assert store.create_json("a/once.json", {"who": "first"}) is True
    assert store.create_json("a/once.json", {"who": "second"}) is False
    assert store.get_json("a/once.json") == {"who": "first"}

    current, version = store.get_json_versioned("a/once.json")
    store.put_json("a/once.json", {"who": "someone else"})  # changed after it was read
    assert store.swap_json("a/once.json", {"who": "late"}, version,
                           check=lambda cur, seen=current: cur == seen) is False
    current, version = store.get_json_versioned("a/once.json")
    assert store.swap_json("a/once.json", {"who": "in time"}, version, check=lambda cur, seen=current: cur == seen)
    assert store.get_json("a/once.json") == {"who": "in time"}


def test_a_damaged_object_is_named_with_the_way_out(store: Store) -> None:
    store.put_bytes("shards/x.json", b'{"path": "/d/a.parquet", "si')
    with pytest.raises(ManifestCorrupt, match="is not valid JSON") as info:
        store.get_json("shards/x.json")
    assert store.uri_of("shards/x.json") in str(info.value) and "delete it and run again" in str(info.value)


def test_the_lease_works_on_s3_too(store: Store) -> None:
    first = Lease(store.child("leases"), "docs-abc", {"run_id": "r1", "mode": "full"}, ttl_s=30)
    first.acquire()
    assert first.renew()
    with pytest.raises(LeaseHeld, match="another run holds .*run r1 \\(full mode\\)"):
        Lease(store.child("leases"), "docs-abc", {"run_id": "r2"}, ttl_s=30).acquire()
    # Its heartbeat stops (a holder on another machine, presumed dead): the next run takes over.
    record = store.get_json("leases/docs-abc.json")
    store.put_json("leases/docs-abc.json", {**record, "host": "elsewhere", "heartbeat_at": record["heartbeat_at"] - 60})
    second = Lease(store.child("leases"), "docs-abc", {"run_id": "r2"}, ttl_s=30)
    second.acquire()
    assert not first.renew() and "taken over" in (first.lost or "")
    first.release()  # not the holder any more: leaves the lease alone
    assert store.get_json("leases/docs-abc.json")["run_id"] == "r2"
    second.release()
    assert store.get_json("leases/docs-abc.json") is None


def test_shard_ids_are_sorted_unique_with_the_largest_count() -> None:
    table, dups = shard_ids(pa.array(["b", "a", None, "b", "c\x01", "a"]), np.array([1, 2, 0, 3, 1, 1], np.int32))
    assert table.column("doc_id").to_pylist() == ["a", "b", "c\x01"] and dups == 2
    assert table.column("n_chunks").to_pylist() == [2, 3, 1]


def test_distinct_count_and_present_match_python_sets(tmp_path: Path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    fs, rng = LocalFileSystem(), random.Random(7)
    universe = [f"id-{i}" for i in range(3000)] + ['q"uote', "new\nline", "ctrl\x01", "ünï", "日本"]
    paths, sets = [], []
    for k in range(11):  # more files than the fan-in below: merged in levels through temporary files
        ids = rng.sample(universe, rng.randint(0, 600))
        table, _ = shard_ids(pa.array(ids, pa.string()), np.ones(len(ids), np.int32))
        write_table(fs, f"{tmp_path}/{k}.parquet", table)
        paths.append(f"{tmp_path}/{k}.parquet")
        sets.append(set(ids))
        assert read_table(fs, paths[-1]).column("doc_id").to_pylist() == sorted(set(ids))
    everything = set().union(*sets)
    repeated: list[pa.Array] = []
    assert distinct_count(fs, paths, f"{tmp_path}/scratch", fan_in=3, rows=50, repeated=repeated) == len(everything)
    in_several = {i for i in everything if sum(i in s for s in sets) > 1}
    assert set(pa.concat_arrays(repeated).to_pylist()) == in_several  # found at whichever level they meet
    hits = locate(fs, paths, pa.array(["id-5", "nope"]))
    assert sorted(hits.column("file").to_pylist()) == [k for k, s in enumerate(sets) if "id-5" in s]
    assert not list((tmp_path / "scratch").glob("*")), "temporary merge files left behind"
    candidates = ["nope", "new\nline", "id-5", "also-nope", "ctrl\x01"]
    assert set(present(fs, paths, pa.array(candidates), rows=64).to_pylist()) == set(candidates) & everything


def test_store_objects_are_json_with_unicode(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.put_json("x.json", {"id": "日本\x01"})
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == {"id": "日本\x01"}
