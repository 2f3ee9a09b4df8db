"""The manifest's shard records as a log: one segment per checkpoint, compacted into an index, crash-safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.manifest import ManifestCorrupt, Store
from cluster.manifest import record_log as rl
from cluster.manifest.record_log import RecordLog


def rec(path: str, ids: str | None = None, **extra: object) -> dict[str, object]:
    return {"path": path, "size": 1, "version": "v", "generation": 1, "ids": ids, **extra}


def objects(store: Store) -> list[str]:
    return store.list("records")


def test_segments_then_an_index_and_the_replaced_id_files_go(store: Store) -> None:
    for name in ("ids/a-1.parquet", "ids/a-2.parquet", "ids/b-1.parquet", "ids/c-1.parquet"):
        store.put_bytes(name, b"x")
    log = RecordLog(store)
    log.append([rec("/s/a", "ids/a-1.parquet"), rec("/s/b", "ids/b-1.parquet")])
    log.append([rec("/s/c", "ids/c-1.parquet")])
    log.append([rec("/s/a", "ids/a-2.parquet", docs=7)], forget=["/s/b"])  # a re-done, b vanished
    assert len(objects(store)) == 3 and all(n.startswith("seg-") for n in objects(store))
    again = RecordLog(store).load()  # another process reads the same records
    assert again == {"/s/a": rec("/s/a", "ids/a-2.parquet", docs=7), "/s/c": rec("/s/c", "ids/c-1.parquet")}

    assert log.compact() is True
    assert objects(store) == ["index-000000000003.parquet"]
    assert store.list("ids") == ["a-2.parquet", "c-1.parquet"]  # the replaced and the forgotten one went
    assert RecordLog(store).load() == again
    assert log.compact() is False  # nothing new

    later = RecordLog(store)  # the next run continues the sequence after the index
    later.load()
    later.append([rec("/s/d")])
    assert sorted(objects(store)) == ["index-000000000003.parquet", "seg-000000000004-" + later.writer + ".json"]
    assert set(RecordLog(store).load()) == {"/s/a", "/s/c", "/s/d"}
    later.compact()  # the new index replaces the one it read
    assert objects(store) == ["index-000000000004.parquet"]


def test_legacy_records_are_read_and_a_compaction_that_dies_half_way_loses_nothing(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch
                                                                                     ) -> None:
    store = Store(str(tmp_path / "m"))
    for name in ("a", "b"):  # the layout before segments: one object per record
        store.put_json(f"shards/{name}.json", rec(f"/s/{name}"))
    log = RecordLog(store)
    assert set(log.load()) == {"/s/a", "/s/b"}
    log.append([], forget=["/s/b"])

    deleted: list[str] = []

    def dies(rel: str) -> None:  # the process dies after the index is written, before anything is deleted
        deleted.append(rel)
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "delete", dies)
    with pytest.raises(KeyboardInterrupt):
        log.compact()
    monkeypatch.undo()
    assert deleted and (tmp_path / "m" / "records" / "index-000000000001.parquet").exists()
    assert (tmp_path / "m" / "shards" / "b.json").exists()  # left behind: the index makes it obsolete
    after = RecordLog(store)
    assert set(after.load()) == {"/s/a"}  # the forgotten legacy record does not come back
    assert after.compact() is True  # the next compaction removes what the first left
    assert store.list("shards") == [] and objects(store) == ["index-000000000001.parquet"]


def test_appends_compact_after_a_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rl, "COMPACT_EVERY", 4)
    store = Store(str(tmp_path / "m"))
    log = RecordLog(store)
    fenced: list[int] = []
    for k in range(10):
        log.append([rec(f"/s/{k}")], fence=lambda: fenced.append(1))
    assert len(fenced) == 2  # after segments 4 and 8, the fence read before anything was deleted
    assert sorted(objects(store)) == ["index-000000000008.parquet",
                                      f"seg-000000000009-{log.writer}.json", f"seg-000000000010-{log.writer}.json"]
    assert set(RecordLog(store).load()) == {f"/s/{k}" for k in range(10)}


def test_a_damaged_segment_is_named(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "m"))
    RecordLog(store).append([rec("/s/a")])
    name = objects(store)[0]
    store.put_bytes(f"records/{name}", json.dumps({"not": "a list"}).encode())
    with pytest.raises(ManifestCorrupt, match=f"{name}.*is not a list of shard records.*Delete it"):
        RecordLog(store).load()
