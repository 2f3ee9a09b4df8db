"""Bad input is reported (summary, dead-letter jsonl, exit code 3) and never stops the good rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.conftest import base_config, config_file, milvus_pks, run_in_ray

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dead_letters(tmp_path: Path) -> list[dict[str, object]]:
    files = sorted((tmp_path / "state" / "errors").glob("errors-*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_every_kind_of_bad_input_is_reported_and_the_rest_written(tmp_path: Path, tiny_m3_dir: Path,
                                                                   ray_local: None) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    good = [{"id": f"good-{i}", "text": f"The quick brown fox number {i} jumps over the lazy dog."} for i in range(6)]
    # parquet shard: null, empty, whitespace-only text, a missing id, a duplicate id, a 115 kB document
    big = "Der schnelle braune Fuchs springt über den faulen Hund. " * 2_000  # ~115 kB: hundreds of chunks
    pq.write_table(pa.Table.from_pylist(good[:3] + [
        {"id": "null-text", "text": None}, {"id": "empty", "text": ""}, {"id": "blank", "text": " \n\t "},
        {"id": None, "text": "no id"}, {"id": "good-0", "text": "a duplicate id inside the shard"},
        {"id": "big", "text": big},
    ]), src / "a.parquet")
    # jsonl shard: a number as text, invalid UTF-8, a line that is not JSON, a duplicate of another shard's id
    lines = [json.dumps(r).encode() for r in good[3:]]
    lines += [b'{"id": "number", "text": 42}', b'{"id": "bad-utf8", "text": "caf\xe9 au lait"}', b"{not json",
              json.dumps({"id": "good-1", "text": "a duplicate id across shards"}).encode()]
    (src / "b.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (src / "c.jsonl.gz").write_bytes(b"")  # zero-byte file
    (src / "d.parquet").write_bytes((src / "a.parquet").read_bytes()[:300])  # truncated parquet
    pq.write_table(pa.table({"doc": ["x"], "body": ["y"]}), src / "e.parquet")  # missing id/text columns
    pq.write_table(pa.table({"id": ["int-text"], "text": [7]}), src / "f.parquet")  # wrong column type

    sections = base_config(tmp_path, str(src), tiny_m3_dir, batch={"max_tokens": 2048}, chunking={"overlap": 4},
                           errors={"max_error_ratio": 1.0}, cluster={"rows_per_task": 256})
    code, summary, log = run_in_ray(config_file(tmp_path, sections), tmp_path, "bad")
    assert code == 3, log[-3000:]

    rejected = dead_letters(tmp_path)
    reasons = {str(r["doc_id"]): str(r["reason"]) for r in rejected if r["doc_id"] is not None}
    assert "empty" in reasons["empty"] and "empty" in reasons["blank"] and "null" in reasons["null-text"]
    assert "expected a string" in reasons["number"]
    by_row = {(Path(str(r["shard"])).name, r["row"]): str(r["reason"]) for r in rejected}
    assert "not valid UTF-8" in by_row[("b.jsonl", 4)] and "not valid JSON" in by_row[("b.jsonl", 5)]
    assert "missing id" in by_row[("a.parquet", 6)]
    assert "int-text" in reasons or any("f.parquet" in str(r["shard"]) for r in rejected)
    shard_errors = {Path(str(r["shard"])).name: str(r["reason"]) for r in rejected if r["doc_id"] is None}
    assert {"c.jsonl.gz", "d.parquet", "e.parquet"} <= set(shard_errors)
    assert "id" in shard_errors["e.parquet"] and "doc" in shard_errors["e.parquet"]  # names what is there
    assert all({"shard", "row", "doc_id", "reason"} <= set(r) for r in rejected)

    assert summary["shards_failed"] >= 3 and summary["duplicate_ids"] == 2
    pks = milvus_pks(tmp_path / "milvus.db")
    # The repeat inside a.parquet is a dead letter (the last occurrence is written); the id found in two
    # shards is written by both (one row in the end).
    assert any(r["doc_id"] == "good-0" and str(r["reason"]).startswith("duplicate_id") for r in rejected)
    assert len(pks) == len(set(pks)) == summary["rows_written"] - 1
    written = {p.split("#")[0] for p in pks}
    assert {f"good-{i}" for i in range(6)} | {"big"} <= written
    assert sum(1 for p in pks if p.startswith("big#")) > 100  # the 115 kB document was chunked, not dropped
    assert not written & {"null-text", "empty", "blank", "number", "bad-utf8", "int-text"}


def test_on_error_fail_stops_with_a_resumable_manifest(tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["fine text", "more fine text"]}), src / "a.parquet")
    pq.write_table(pa.table({"id": ["c", "d"], "text": ["fine", ""]}), src / "b.parquet")
    sections = base_config(tmp_path, str(src), tiny_m3_dir, errors={"on_error": "fail"}, chunking={"overlap": 4},
                           batch={"max_tokens": 1024})
    code, summary, log = run_in_ray(config_file(tmp_path, sections), tmp_path, "fail")
    assert code == 1 and "errors.on_error=fail" in log and "doc_id=d" in log
    assert summary["failed"] is True


def test_a_vector_still_non_finite_in_fp32_is_an_error_row(tmp_path: Path, tiny_m3_dir: Path) -> None:
    """A model that overflows even in fp32: the chunk is rejected, never given a vector."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from cluster.stages.embed import EmbedStage
    from cluster.stages.tokenize import tokenize_docs
    from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig

    broken = tmp_path / "broken"
    shutil.copytree(tiny_m3_dir, broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("encoder.layer.1.output.dense.weight"))
    weights[name] = weights[name] * torch.tensor(1e38)
    save_file(weights, broken / "model.safetensors")

    model = ModelConfig(name=str(broken), precision="fp32")
    chunking = ChunkingConfig(overlap=4)
    docs = pa.table({"doc_id": ["x"], "text": ["The quick brown fox."], "_shard": ["s"],
                     "_row": pa.array([0], pa.int64()), "error": pa.nulls(1, pa.string()),
                     "_shard_end": pa.nulls(1, pa.int64())})
    out = EmbedStage(model, BatchConfig(max_tokens=1024), chunking)(tokenize_docs(docs, model=model, chunking=chunking))
    assert out.column("error")[0].as_py().startswith("non-finite vector")
    assert out.column("dense")[0].as_py() is None
    assert not np.isnan(np.asarray(out.column("n_tokens"))).any()


