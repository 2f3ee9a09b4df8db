"""What a Milvus 2.6 server refuses, deletions only with full knowledge, and who may write (issue: exactly once).

Every end-to-end test here writes through the job's :class:`~cluster.milvus.strict.CheckedClient`,
which refuses a request repeating a primary key with code 1100, as a Milvus 2.6 server does
(milvus-lite alone accepts it), and journals each upsert and delete request, so that the tests
count writes per key: a document written twice, or a key sent twice in one request, fails them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.contract import chunk_pk, doc_key
from cluster.milvus.strict import journal_counts
from tests.reliability.conftest import base_config, config_file, release_lite, run_in_ray

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    files = sorted((tmp_path / "state" / "errors").glob("errors-*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def rows_by_doc(db: Path) -> dict[str, list[dict[str, Any]]]:
    from pymilvus import MilvusClient

    client = MilvusClient(str(db))
    try:
        client.load_collection("docs")
        rows = client.query("docs", filter="chunk_index >= 0", output_fields=["pk", "doc_id", "chunk_index", "text"],
                            limit=16384)
    finally:
        client.close()
        release_lite(db)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["doc_id"], []).append(r)
    return out


def config(tmp_path: Path, src: Path, model: Path, **extra: Any) -> Path:
    sections = base_config(tmp_path, str(src), model, chunking={"overlap": 4}, batch={"max_tokens": 1024},
                           milvus={"write_journal": str(tmp_path / "journal")}, errors={"max_error_ratio": 1.0},
                           **extra)
    return config_file(tmp_path, sections)


def test_a_repeated_id_and_a_metadata_value_of_another_type_are_dead_letters_and_the_rest_written_once(
        tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    """17 documents, one id three times in one shard: before, a 2.6 server refused the request (code 1100),
    every re-run the same; now the last occurrence is written once, the earlier ones are dead letters.
    The other shard's ``year`` is a string column where the first shard's (and so the collection's) is an
    integer: a value that does not convert is a dead letter, not a run that never resumes."""
    src = tmp_path / "docs"
    src.mkdir()
    docs = [{"id": f"d{i}", "text": f"Document {i} about routers and coffee.", "year": 2000 + i} for i in range(16)]
    a = docs[:3] + [{"id": "twice", "text": "the first version", "year": 1}] + docs[3:8] + [
        {"id": "twice", "text": "the second version", "year": 2}] + docs[8:10] + [
        {"id": "twice", "text": "the last, which wins", "year": 3}]
    pq.write_table(pa.Table.from_pylist(a), src / "a.parquet")  # rows 3, 9 and 12, read in batches of 4
    years = ["unknown", "1999", None, "2013", "2014", "2015"]  # strings: only "unknown" does not convert
    pq.write_table(pa.Table.from_pylist([{**d, "year": y} for d, y in zip(docs[10:], years, strict=True)]),
                   src / "b.parquet")
    cfg = config(tmp_path, src, tiny_m3_dir, source={"read_batch_rows": 4, "metadata_columns": ["year"]},
                 mode="incremental")
    code, summary, log = run_in_ray(cfg, tmp_path, "dup")
    assert code == 3, log[-3000:]  # rows were rejected (the earlier occurrences of 'twice', d10), the rest written
    assert summary["duplicate_ids"] == 2 and summary["docs_failed"] == 3
    letters = dead_letters(tmp_path)
    reasons = [r for r in letters if r["doc_id"] == "twice"]
    assert sorted(r["row"] for r in reasons) == [3, 9] and all(r["reason"].startswith("duplicate_id") for r in reasons)
    bad = [r for r in letters if r["doc_id"] == "d10"]
    assert len(bad) == 1 and "'year'" in bad[0]["reason"] and "int64" in bad[0]["reason"]
    rows = rows_by_doc(tmp_path / "milvus.db")
    assert len(rows) == 16 and "d10" not in rows and [r["text"] for r in rows["twice"]] == ["the last, which wins"]
    writes = journal_counts(str(tmp_path / "journal"))
    assert writes and set(writes.values()) == {1}, "a key was sent more than once"
    assert sum(writes.values()) == sum(len(v) for v in rows.values())

    code, summary, _ = run_in_ray(cfg, tmp_path, "again")  # finished (exit 3 is final): nothing to redo
    assert code == 0 and summary["shards_skipped"] == 2 and summary["shards"] == 0


def _shards(src: Path, n: int, per: int, tag: str = "") -> None:
    for k in range(n):
        ids = [f"s{k}-{i}" for i in range(per)]
        pq.write_table(pa.table({"id": ids, "text": [f"Text of {d} about bicycles {tag}." for d in ids]}),
                       src / f"part-{k:02d}.parquet")


def test_delete_missing_refuses_a_mass_deletion_and_waits_for_every_shard(
        tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    _shards(src, 10, 10)
    cfg = config(tmp_path, src, tiny_m3_dir, mode="incremental", delete_missing=True)
    assert run_in_ray(cfg, tmp_path, "first")[0] == 0

    # A listing that shrinks from 10 shards to 1 (a partial sync): nothing is deleted, exit 2, named setting.
    for k in range(1, 10):
        (src / f"part-{k:02d}.parquet").rename(tmp_path / f"away-{k:02d}.parquet")
    code, summary, log = run_in_ray(cfg, tmp_path, "shrunk")
    assert code == 2 and "delete_missing_max_ratio" in log and summary["deletes_held"] > 0
    assert len(rows_by_doc(tmp_path / "milvus.db")) == 100

    # Documents of a vanished shard moved into a shard that cannot be read in this run: nothing is deleted.
    for k in range(1, 10):
        (tmp_path / f"away-{k:02d}.parquet").rename(src / f"part-{k:02d}.parquet")
    moved = pa.table({"id": [f"s9-{i}" for i in range(10)], "text": ["moved"] * 10})
    (src / "part-09.parquet").unlink()
    pq.write_table(moved, tmp_path / "new.parquet")
    (src / "part-10.parquet").write_bytes((tmp_path / "new.parquet").read_bytes()[:200])  # unreadable for now
    code, summary, log = run_in_ray(cfg, tmp_path, "moved-unreadable")
    # the one shard this run processed failed: exit 1 ("every shard failed to read"), nothing deleted
    assert code == 1 and summary["shards_failed"] == 1 and summary["docs_deleted"] == 0, log[-3000:]
    assert summary["deletes_held"] > 0 and "held back" in log
    assert len(rows_by_doc(tmp_path / "milvus.db")) == 100

    (src / "part-10.parquet").write_bytes((tmp_path / "new.parquet").read_bytes())  # readable again: kept, moved
    code, summary, log = run_in_ray(cfg, tmp_path, "moved")
    assert code == 0 and summary["docs_deleted"] == 0, log[-3000:]
    rows = rows_by_doc(tmp_path / "milvus.db")
    assert len(rows) == 100 and rows["s9-0"][0]["text"] == "moved"

    # A deliberate deletion above the ratio goes through once the setting is raised.
    (src / "part-10.parquet").unlink()
    code, summary, _ = run_in_ray(config(tmp_path, src, tiny_m3_dir, mode="incremental", delete_missing=True,
                                         delete_missing_max_ratio=0.2), tmp_path, "deliberate")
    assert code == 0 and summary["docs_deleted"] == 10
    assert len(rows_by_doc(tmp_path / "milvus.db")) == 90
    deletes = journal_counts(str(tmp_path / "journal"), op="delete")
    gone = {doc_key(f"s9-{i}") for i in range(10)}
    assert all(deletes.get(chunk_pk(f"s9-{i}", 0)) == 1 for i in range(10))  # each deleted once, after full knowledge
    assert {k.split("#")[0] for k in deletes} == gone  # and nothing else was ever deleted


def test_an_id_in_two_shards_ends_as_the_version_of_the_shard_that_sorts_last(
        tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    """The loser (a.parquet, long: several chunks) is read last and written last; the winner (b.parquet, short)
    is written again after the stream: exactly its one chunk remains, no tail of the longer version."""
    src = tmp_path / "docs"
    src.mkdir()
    long_text = " ".join(f"Sentence {i} of the long version about descaling a coffee machine." for i in range(60))
    a = [{"id": f"a{i}", "text": f"Filler document {i} about bicycles and routers."} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(a + [{"id": "shared", "text": long_text}]), src / "a.parquet")
    pq.write_table(pa.table({"id": ["shared", "b1"], "text": ["The short version wins.", "Another one."]}),
                   src / "b.parquet")
    code, summary, log = run_in_ray(config(tmp_path, src, tiny_m3_dir), tmp_path, "two-shards")
    assert code == 0, log[-3000:]
    assert summary["duplicate_ids"] == 1 and summary["repaired_rows"] == 1
    rows = rows_by_doc(tmp_path / "milvus.db")
    assert [(r["chunk_index"], r["text"]) for r in rows["shared"]] == [(0, "The short version wins.")]
    assert len(rows) == 42 and all(len(v) == 1 for k, v in rows.items() if k != "shared")
    deletes = journal_counts(str(tmp_path / "journal"), op="delete")
    assert {k.split("#")[0] for k in deletes} <= {doc_key("shared")}  # only the long version's tail went
    assert not list((tmp_path / "state" / "checkpoints").glob("*/repairs.json"))  # done, so no longer recorded
