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
                                         small_corpus: list[dict[str, str]]) -> None:
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
    assert failures == [] and "docs_v1" in answered and len(answered) > 20
    assert client.query(new, filter="", output_fields=["count(*)"])[0]["count(*)"] == second["chunks_embedded"]

    assert reindex(cfg, "--rollback")[0] == 0
    assert client.describe_alias("docs_live")["collection_name"] == "docs_v1"
    assert reindex(cfg, "--rollback")[0] == 2  # nothing before v1: never back to the rolled-back one
    assert client.describe_alias("docs_live")["collection_name"] == "docs_v1"

    code, third = reindex(cfg, "--collection", "docs_v3")  # retention 2: the live and one previous stay
    assert code == 0 and client.describe_alias("docs_live")["collection_name"] == "docs_v3"
    collections = set(client.list_collections())
    assert "docs_v3" in collections and "docs_v1" in collections and new not in collections
    assert third["dropped"] == [new]
    client.close()


def test_reindex_refuses_a_collection_that_fails_validation(tmp_path: Path, tiny_m3_dir: Path, ray_local: None,
                                                            small_corpus: list[dict[str, str]]) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(small_corpus[:6]), src / "part-0.parquet")
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024},
                       milvus={"uri": str(tmp_path / "m.db"), "alias": "live", "store_text": False},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None})
    assert reindex(cfg, "--collection", "v1")[0] == 0
    assert reindex(cfg, "--rollback")[0] == 2  # nothing before v1
