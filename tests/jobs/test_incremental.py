"""mode: incremental — only new or changed shards are processed; delete_missing removes what left."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.contract import chunk_pk
from tests.jobs.conftest import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def shard(folder: Path, name: str, ids: list[str], tag: str = "", long: tuple[str, ...] = ()) -> None:
    """One parquet shard; the documents named in ``long`` are several chunks long."""
    long_text = " ".join(f"Sentence number {i} about descaling a coffee machine." for i in range(40))
    texts = [long_text if i in long else f"Document {i} about routers, coffee and bicycles {tag}." for i in ids]
    pq.write_table(pa.table({"id": ids, "text": texts}), folder / name)


def run(cfg: Path) -> tuple[int, dict[str, Any]]:
    from jobs.embed import main

    summary = cfg.parent / "summary.json"
    summary.unlink(missing_ok=True)
    code = main(["--config", str(cfg), "--summary", str(summary)])
    return code, json.loads(summary.read_text())


def collection_rows(db: Path) -> list[dict[str, Any]]:
    """Every row of the collection: doc_id, pk, chunk_index and text."""
    from pymilvus import MilvusClient

    client = MilvusClient(str(db))
    try:
        client.load_collection("docs")
        return client.query("docs", filter="chunk_index >= 0", output_fields=["doc_id", "pk", "chunk_index", "text"],
                            limit=1000)
    finally:
        client.close()


def doc_ids(db: Path) -> dict[str, str]:
    return {r["doc_id"]: r["text"] for r in collection_rows(db)}


def test_incremental_runs(tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    shard(src, "a.parquet", ["a1", "a2", "a3"], long=("a1",))  # a1 is several chunks long, then short
    shard(src, "b.parquet", ["b1", "b2"])
    shard(src, "d.parquet", ["d1"])  # never changes
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024}, milvus={"uri": str(tmp_path / "m.db"), "collection": "docs"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None},
                       mode="incremental", delete_missing=True, delete_missing_max_ratio=1.0)
    code, s = run(cfg)
    assert code == 0 and s["shards_done"] == 3 and s["docs_read"] == 6 and s["chunks_embedded"] > 6 + 2

    code, s = run(cfg)  # nothing changed: no work at all
    assert code == 0 and s["shards"] == 0 and s["shards_skipped"] == 3 and s["docs_read"] == 0

    # In one run: a new shard, a changed one (a2 left it, a1/a3 rewritten, a1 now one chunk long), a
    # vanished one, an unchanged one.
    shard(src, "c.parquet", ["c1"])
    time.sleep(0.01)
    shard(src, "a.parquet", ["a1", "a3"], tag="v2")
    (src / "b.parquet").unlink()
    code, s = run(cfg)
    assert code == 0 and s["shards_done"] == 2 and s["shards_skipped"] == 1 and s["docs_read"] == 3
    assert s["docs_deleted"] == 3  # a2, b1, b2
    now = doc_ids(tmp_path / "m.db")
    assert set(now) == {"a1", "a3", "c1", "d1"}
    assert "v2" in now["a1"]
    # the shorter new version of a1 left no stale chunk of the long one behind
    a1 = [(r["pk"], r["chunk_index"]) for r in collection_rows(tmp_path / "m.db") if r["doc_id"] == "a1"]
    assert a1 == [(chunk_pk("a1", 0), 0)]

    code, s = run(cfg)  # and again nothing to do
    assert s["shards"] == 0 and s["docs_deleted"] == 0

    shard(src, "c.parquet", ["c1", "a3"], tag="moved")  # a3 moves from a.parquet to c.parquet: kept
    shard(src, "a.parquet", ["a1"], tag="v2")
    code, s = run(cfg)
    assert code == 0 and s["docs_deleted"] == 0
    now = doc_ids(tmp_path / "m.db")
    assert set(now) == {"a1", "a3", "c1", "d1"} and "moved" in now["a3"]


def test_unchanged_documents_are_skipped_moved_ones_found_and_a_stopped_run_not_trusted(
        tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    from pymilvus import MilvusClient

    from cluster.milvus.strict import journal_counts

    src = tmp_path / "docs"
    src.mkdir()
    shard(src, "a.parquet", ["a1", "a2", "a3", "a4"])
    shard(src, "b.parquet", ["b1", "b2", "b3"])
    journal = tmp_path / "journal"
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, batch={"max_tokens": 1024},
                       milvus={"uri": str(tmp_path / "m.db"), "collection": "docs", "write_journal": str(journal)},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None},
                       mode="incremental", delete_missing=True, delete_missing_max_ratio=1.0)
    code, first = run(cfg)
    assert code == 0 and first["chunks_embedded"] == 7 and first["docs_unchanged"] == 0

    # One document edited; shard b renamed (a new path: its documents are found in the collection).
    texts = pq.read_table(src / "a.parquet").column("text").to_pylist()
    texts[1] = "A new version of document a2: printers, tea and trains."
    pq.write_table(pa.table({"id": ["a1", "a2", "a3", "a4"], "text": texts}), src / "a.parquet")
    (src / "b.parquet").rename(src / "c.parquet")
    code, s = run(cfg)
    assert code == 0, s
    assert s["docs_read"] == 7 and s["docs_unchanged"] == 6 and s["chunks_embedded"] == 1
    assert 0 < s["tokens_skipped"] < first["tokens"] and s["tokens"] + s["tokens_skipped"] > first["tokens"] * 0.9
    assert s["docs_deleted"] == 0  # b's documents are in c
    written = journal_counts(str(journal))
    assert written[chunk_pk("a2", 0)] == 2 and all(written[chunk_pk(d, 0)] == 1 for d in
                                                   ("a1", "a3", "a4", "b1", "b2", "b3"))
    assert doc_ids(tmp_path / "m.db")["a2"] == texts[1]

    # A run that stopped half-way wrote another version of a1, then the source went back to the recorded
    # text: the id file's fingerprint would say "unchanged"; the collection says otherwise.
    client = MilvusClient(str(tmp_path / "m.db"))
    try:
        client.load_collection("docs")
        row = client.get("docs", ids=[chunk_pk("a1", 0)])[0]
        client.upsert("docs", [{**row, "text": "half-written", "embed_fp": "00000000000000ff/1/9"}])
    finally:
        client.close()
    state_file = next((tmp_path / "state").glob("*/state.json"))
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "open_run": "a-run-that-was-killed"}))
    texts[2] = "A new version of document a3: so that shard a is read again."
    pq.write_table(pa.table({"id": ["a1", "a2", "a3", "a4"], "text": texts}), src / "a.parquet")
    code, s = run(cfg)
    assert code == 0, s
    assert s["docs_unchanged"] == 2 and s["chunks_embedded"] == 2  # a2, a4 confirmed; a1 and a3 embedded
    assert doc_ids(tmp_path / "m.db")["a1"] == texts[0]
    assert "open_run" not in json.loads(state_file.read_text())  # finished: the next run trusts the id files
