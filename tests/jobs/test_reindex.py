"""Backfill re-indexing: a new collection behind the readers' alias, swapped with no failed query."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.jobs.conftest import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def reindex(cfg: Path, *args: str) -> tuple[int, dict[str, object]]:
    from jobs.reindex import main

    summary = cfg.parent / "reindex-summary.json"
    summary.unlink(missing_ok=True)
    code = main(["--config", str(cfg), "--summary", str(summary), *args])
    return code, (json.loads(summary.read_text()) if summary.exists() else {})


def test_reindex_swap_rollback_retention(tmp_path: Path, tiny_m3_dir: Path, ray_local: None,
                                         small_corpus: list[dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    from pymilvus import MilvusClient

    src = tmp_path / "docs"
    src.mkdir()
    rows = [r for r in small_corpus if r["kind"] == "body"][:24]
    pq.write_table(pa.Table.from_pylist(rows), src / "part-0.parquet")
    db = tmp_path / "m.db"
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024},
                       milvus={"uri": str(db), "collection": "unused", "alias": "docs_live"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None},
                       reindex={"retention": 2, "validate_sample": 10})

    code, first = reindex(cfg, "--collection", "docs_v1")
    assert code == 0 and first["collection"] == "docs_v1"
    client = MilvusClient(str(db))  # shared by the next reindex in this process (one holder per folder)
    assert client.describe_alias("docs_live")["collection_name"] == "docs_v1"
    client.load_collection("docs_v1")
    vector = client.query("docs_v1", filter="chunk_index == 0", output_fields=["dense"], limit=1)[0]["dense"]

    # Readers query the alias in a loop while a new collection (other chunking) is built and swapped in.
    stop, failures, answered = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                hits = client.search("docs_live", data=[vector], limit=3, anns_field="dense", output_fields=["pk"])
                assert len(hits[0]) == 3
                answered.append(client.describe_alias("docs_live")["collection_name"])
            except Exception as e:  # noqa: BLE001 - any failed query fails the test
                failures.append(repr(e))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        code, second = reindex(cfg, "--set", "chunking.overlap=8")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert code == 0, second
    new = str(second["collection"])
    assert new.startswith("docs_live__tiny_m3_dfull_")
    assert client.describe_alias("docs_live")["collection_name"] == new
    assert failures == [] and "docs_v1" in answered  # readers were answered throughout, none failed
    assert client.query(new, filter="", output_fields=["count(*)"])[0]["count(*)"] == second["chunks_embedded"]

    assert reindex(cfg, "--rollback")[0] == 0
    assert client.describe_alias("docs_live")["collection_name"] == "docs_v1"
    assert reindex(cfg, "--rollback")[0] == 2  # nothing before v1: never back to the rolled-back one
    assert client.describe_alias("docs_live")["collection_name"] == "docs_v1"

    # Retention 2: the live and one previous stay. This build stores no text: validation skips the
    # self-retrieval check (it needs the text) and still swaps.
    caplog.clear()
    code, third = reindex(cfg, "--collection", "docs_v3", "--set", "milvus.store_text=false")
    assert code == 0 and client.describe_alias("docs_live")["collection_name"] == "docs_v3"
    assert "self-retrieval check skipped" in caplog.text
    collections = set(client.list_collections())
    assert "docs_v3" in collections and "docs_v1" in collections and new not in collections
    assert third["dropped"] == [new]
    client.close()


# ---- resume, retention, retries (issue 15) ------------------------------------------------------------------------

def _corpus_shards(src: Path, rows: list[dict[str, str]], n: int) -> None:
    src.mkdir()
    for i in range(n):
        pq.write_table(pa.Table.from_pylist(rows[i::n]), src / f"part-{i}.parquet")


def _make_collection(client: object, name: str) -> None:
    client.create_collection(name, dimension=4)  # type: ignore[attr-defined]


def test_reindex_continues_a_killed_build_drops_abandoned_ones_and_retries_validation(
        tmp_path: Path, tiny_m3_dir: Path, ray_local: None, small_corpus: list[dict[str, str]],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """(a) a build killed after its first recorded shard is continued by the re-run (same collection, only the
    other shards embedded); (b) retention then drops the superseded build and a leftover of the alias, keeps the
    previous target and what is not this alias's; (c) the validation's first Milvus call fails with a dropped
    connection and is retried."""
    import signal

    from pymilvus import MilvusClient, MilvusException

    import cluster.milvus.connect as connect_module
    import jobs.reindex
    from cluster.manifest.manifest import Manifest
    from jobs.cli import Interrupted

    src = tmp_path / "docs"
    _corpus_shards(src, [r for r in small_corpus if r["kind"] == "body"][:9], 3)
    db = tmp_path / "m.db"
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024}, milvus={"uri": str(db), "alias": "live"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None},
                       reindex={"retention": 2, "validate_sample": 2})
    client = MilvusClient(str(db))  # shared by the reindex runs of this process (one holder per folder)
    for name in ("live_v0", "live__tiny_m3_dfull_20240101000000", "live__x__tiny_m3_dfull_20240101000000", "notes"):
        _make_collection(client, name)
    client.create_alias("live_v0", "live")  # the live collection, aliased by hand

    # A build of other settings (dimension 16) stops right after it created its collection: superseded below.
    def refuse(cfg: object, the_plan: object) -> None:
        raise ValueError("simulated failure after planning")

    with monkeypatch.context() as m:
        m.setattr(jobs.reindex, "check_alias_name", refuse)
        assert reindex(cfg, "--set", "model.dense_dim=16")[0] == 2
    made = {n for n in client.list_collections() if n.startswith("live__tiny_m3_d16_")}
    assert len(made) == 1
    abandoned = made.pop()

    # The build is killed (SIGTERM) right after its first checkpoint, which had one shard durable (the records of a
    # checkpoint are one manifest segment: exactly one segment, of one shard, gets through).
    mark_done = Manifest.mark_done
    once = threading.Lock()

    def killed(self: Manifest, done: list, *args: object, **kwargs: object) -> None:
        with once:
            if not killed.done:  # type: ignore[attr-defined]
                mark_done(self, done[:1], *args, **kwargs)
                killed.done = True  # type: ignore[attr-defined]
        raise Interrupted(signal.SIGTERM)

    killed.done = False  # type: ignore[attr-defined]
    with monkeypatch.context() as m:
        m.setattr(Manifest, "mark_done", killed)
        code, first = reindex(cfg)
    assert code == 143 and first["interrupted"] == "SIGTERM"
    building = set(client.list_collections()) - {abandoned, "live_v0", "live__tiny_m3_dfull_20240101000000",
                                                             "live__x__tiny_m3_dfull_20240101000000", "notes"}
    assert len(building) == 1
    name = building.pop()
    assert client.describe_alias("live")["collection_name"] == "live_v0"

    # The re-run: validation's first count fails as a dropped idle connection does ("Too many pings" GOAWAY).
    counts = {"calls": 0}

    class Flaky:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def __getattr__(self, attr: str) -> object:
            return getattr(self.inner, attr)

        def query(self, collection: str, *args: object, **kwargs: object) -> object:
            if kwargs.get("output_fields") == ["count(*)"]:  # only the validation counts rows
                counts["calls"] += 1
                if counts["calls"] == 1:
                    raise MilvusException(code=2, message="Fail connecting to server: GOAWAY received: too_many_pings")
            return self.inner.query(collection, *args, **kwargs)  # type: ignore[attr-defined]

    real_connect = connect_module.connect
    monkeypatch.setattr(connect_module, "connect", lambda *a, **k: Flaky(real_connect(*a, **k)))
    caplog.set_level("INFO")
    code, second = reindex(cfg)
    monkeypatch.setattr(connect_module, "connect", real_connect)

    facts = {
        "exit": code,
        "collection": second.get("collection"),
        "shards_skipped": second.get("shards_skipped"),
        "shards_done": second.get("shards_done"),
        "alias": client.describe_alias("live")["collection_name"],
        "count calls": counts["calls"],
        "collections": sorted(client.list_collections()),
        "abandoned build logged": any(abandoned in r.getMessage() and "abandoned build" in r.getMessage()
                                      for r in caplog.records),
        "leftover logged": any("live__tiny_m3_dfull_20240101000000" in r.getMessage() and "retention drops" in
                               r.getMessage() for r in caplog.records),
    }
    assert facts == {
        "exit": 0,
        "collection": name,  # (a) the same collection, continued
        "shards_skipped": 1,
        "shards_done": 2,  # (a) only the shards the killed run had not recorded
        "alias": name,
        "count calls": 2,  # (c) the failed count was retried
        "collections": sorted([name, "live_v0", "live__x__tiny_m3_dfull_20240101000000", "notes"]),  # (b)
        "abandoned build logged": True,
        "leftover logged": True,
    }
    client.close()
