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


def shard(folder: Path, name: str, ids: list[str], tag: str = "") -> None:
    texts = [f"Document {i} about routers, coffee and bicycles {tag}." for i in ids]
    pq.write_table(pa.table({"id": ids, "text": texts}), folder / name)


def run(cfg: Path) -> tuple[int, dict[str, Any]]:
    from jobs.embed import main

    summary = cfg.parent / "summary.json"
    summary.unlink(missing_ok=True)
    code = main(["--config", str(cfg), "--summary", str(summary)])
    return code, json.loads(summary.read_text())


def doc_ids(db: Path) -> dict[str, str]:
    from pymilvus import MilvusClient

    client = MilvusClient(str(db))
    try:
        client.load_collection("docs")
        rows = client.query("docs", filter="chunk_index >= 0", output_fields=["doc_id", "text"], limit=1000)
        return {r["doc_id"]: r["text"] for r in rows}
    finally:
        client.close()


def test_incremental_runs(tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    shard(src, "a.parquet", ["a1", "a2", "a3"])
    shard(src, "b.parquet", ["b1", "b2"])
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024}, milvus={"uri": str(tmp_path / "m.db"), "collection": "docs"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None},
                       mode="incremental", delete_missing=True, delete_missing_max_ratio=1.0)
    code, s = run(cfg)
    assert code == 0 and s["shards_done"] == 2 and s["docs_read"] == 5

    code, s = run(cfg)  # nothing changed: no work at all
    assert code == 0 and s["shards"] == 0 and s["shards_skipped"] == 2 and s["docs_read"] == 0

    shard(src, "c.parquet", ["c1"])  # a new shard
    code, s = run(cfg)
    assert s["shards_skipped"] == 2 and s["docs_read"] == 1 and set(doc_ids(tmp_path / "m.db")) >= {"c1"}

    time.sleep(0.01)
    shard(src, "a.parquet", ["a1", "a3"], tag="v2")  # a changed shard: a2 left it, a1/a3 rewritten
    (src / "b.parquet").unlink()  # a vanished shard
    code, s = run(cfg)
    assert code == 0 and s["shards_skipped"] == 1 and s["docs_read"] == 2
    assert s["docs_deleted"] == 3  # a2, b1, b2
    now = doc_ids(tmp_path / "m.db")
    assert set(now) == {"a1", "a3", "c1"}
    assert "v2" in now["a1"]

    code, s = run(cfg)  # and again nothing to do
    assert s["shards"] == 0 and s["docs_deleted"] == 0

    shard(src, "c.parquet", ["c1", "a3"], tag="moved")  # a3 moves from a.parquet to c.parquet: kept
    shard(src, "a.parquet", ["a1"], tag="v2")
    code, s = run(cfg)
    assert code == 0 and s["docs_deleted"] == 0
    now = doc_ids(tmp_path / "m.db")
    assert set(now) == {"a1", "a3", "c1"} and "moved" in now["a3"]


def test_a_shorter_new_version_leaves_no_stale_chunks(tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    from pymilvus import MilvusClient

    src = tmp_path / "docs"
    src.mkdir()
    long_text = " ".join(f"Sentence number {i} about descaling a coffee machine." for i in range(40))
    pq.write_table(pa.table({"id": ["d"], "text": [long_text]}), src / "a.parquet")
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024}, milvus={"uri": str(tmp_path / "m.db"), "collection": "docs"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None}, mode="incremental")
    assert run(cfg)[1]["chunks_embedded"] > 3
    pq.write_table(pa.table({"id": ["d"], "text": ["Now a short document."]}), src / "a.parquet")
    code, s = run(cfg)
    assert code == 0 and s["chunks_embedded"] == 1
    client = MilvusClient(str(tmp_path / "m.db"))
    try:
        client.load_collection("docs")
        rows = client.query("docs", filter='doc_id == "d"', output_fields=["pk", "chunk_index", "text"])
    finally:
        client.close()
    assert [(r["pk"], r["chunk_index"]) for r in rows] == [(chunk_pk("d", 0), 0)]
    assert rows[0]["text"] == "Now a short document."


def test_full_mode_resumes_then_starts_over(tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    shard(src, "a.parquet", ["a1", "a2"])
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024}, milvus={"uri": str(tmp_path / "m.db"), "collection": "docs"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None})
    assert run(cfg)[1]["shards_done"] == 1
    code, s = run(cfg)  # the previous full run finished: a new full run redoes everything
    assert code == 0 and s["shards_done"] == 1 and s["shards_skipped"] == 0
