"""Ids with quotes, backslashes, newlines, control characters and filter syntax: exact deletes, never a filter.

Primary keys hash the id (cluster.contract.chunk_pk), so deletes go by key and no id ever reaches
a Milvus expression. Each run's collection must hold exactly the (doc_id, chunk_index) pairs the
source implies: full run, a document shortened (stale tail deleted), another moved, a shard removed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.contract import chunk_pk
from tests.jobs.conftest import write_config
from tests.reliability.conftest import release_lite

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTILE = ['quote"inside', "apos'trophe", "back\\slash", "new\nline", "ctrl\x01char", '" or doc_id != "',
           "x' or pk != 'y", "tab\tand\r\nCRLF", "ünïcødé/日本語"]
LONG = " ".join(f"Sentence {i} about descaling a coffee machine and resetting a router." for i in range(60))


def shard(folder: Path, name: str, docs: dict[str, str]) -> None:
    pq.write_table(pa.table({"id": list(docs), "text": list(docs.values())}), folder / name)


def run(cfg: Path) -> dict[str, Any]:
    from jobs.embed import main

    summary = cfg.parent / "summary.json"
    summary.unlink(missing_ok=True)
    code = main(["--config", str(cfg), "--summary", str(summary)])
    data = json.loads(summary.read_text())
    assert code == 0, data
    return data


def stored(db: Path) -> set[tuple[str, int]]:
    from pymilvus import MilvusClient

    client = MilvusClient(str(db))
    try:
        client.load_collection("docs")
        rows = client.query("docs", filter="chunk_index >= 0", output_fields=["pk", "doc_id", "chunk_index"],
                            limit=10_000)
    finally:
        client.close()
        release_lite(db)
    assert all(r["pk"] == chunk_pk(r["doc_id"], r["chunk_index"]) for r in rows)
    pairs = {(r["doc_id"], r["chunk_index"]) for r in rows}
    assert len(pairs) == len(rows), "duplicate rows"
    return pairs


def expected(model: Path, docs: dict[str, str]) -> set[tuple[str, int]]:
    """(doc_id, chunk_index) of every chunk the job's tokenizer makes of ``docs``."""
    from cluster.stages.tokenize import get_tokenizer
    from embedder.settings import ChunkingConfig, ModelConfig

    tok = get_tokenizer(ModelConfig(name=str(model), precision="fp32"), ChunkingConfig(overlap=4))
    chunks = tok.passages(list(docs.values()))
    ids = list(docs)
    return {(ids[d], k) for d, k in zip(chunks.doc, chunks.chunk_index)}


def test_hostile_ids_full_shrunk_moved_and_removed(tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    a = {doc_id: (LONG if i % 3 == 0 else f"Short document number {i}.") for i, doc_id in enumerate(HOSTILE)}
    b = {"b\x01one": LONG, 'b"two': "Another short one.", "b\nthree": "A third."}
    shard(src, "a.parquet", a)
    shard(src, "b.parquet", b)
    db = tmp_path / "m.db"
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, chunking={"overlap": 4},
                       batch={"max_tokens": 1024}, milvus={"uri": str(db), "collection": "docs"},
                       checkpoint={"uri": str(tmp_path / "state"), "record_every_s": 1}, errors={"uri": None},
                       mode="incremental", delete_missing=True, delete_missing_max_ratio=1.0)
    s = run(cfg)
    assert s["docs_read"] == len(a) + len(b) and s["docs_failed"] == 0
    assert stored(db) == expected(tiny_m3_dir, {**a, **b})
    assert len(expected(tiny_m3_dir, {HOSTILE[0]: LONG})) > 2  # the long documents really have several chunks

    # Shorter versions of two long hostile documents: their stale tails go, by key.
    a2 = {**a, HOSTILE[0]: "Now short.", HOSTILE[3]: "Also short now."}
    shard(src, "a.parquet", a2)
    s = run(cfg)
    shrunk = len(expected(tiny_m3_dir, {HOSTILE[0]: LONG, HOSTILE[3]: LONG})) - 2
    assert s["shards_skipped"] == 1 and s["stale_chunks_deleted"] == shrunk and s["chunks_deleted"] == 0
    assert stored(db) == expected(tiny_m3_dir, {**a2, **b})

    # A document leaves a.parquet for b.parquet (kept), another leaves for good (deleted).
    moved, gone = HOSTILE[4], HOSTILE[5]
    a3 = {k: v for k, v in a2.items() if k not in (moved, gone)}
    b3 = {**b, moved: a2[moved]}
    shard(src, "a.parquet", a3)
    shard(src, "b.parquet", b3)
    s = run(cfg)
    assert s["docs_deleted"] == 1
    assert stored(db) == expected(tiny_m3_dir, {**a3, **b3})

    # The whole of b.parquet vanishes: every chunk of its documents goes, the moved one included.
    (src / "b.parquet").unlink()
    s = run(cfg)
    assert s["docs_deleted"] == len(b3)
    assert stored(db) == expected(tiny_m3_dir, a3)

    s = run(cfg)  # and a run with nothing to do deletes nothing and leaves everything
    assert s["shards"] == 0 and s["docs_deleted"] == 0
    assert stored(db) == expected(tiny_m3_dir, a3)
