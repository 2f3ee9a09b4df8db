"""Ids of different types across shards: never merged silently.

Integer ids become their decimal string (reversible: ``int(doc_id)``), so ``1`` and ``"1"`` name
one document: the run reports the shard whose id kind differs from earlier shards and counts the
cross-shard duplicate. Floating-point ids are rejected (``1.0`` is not an exact id), with a dead
letter each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.jobs.conftest import write_config
from tests.reliability.conftest import milvus_pks

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_int_string_and_float_ids_across_shards(tmp_path: Path, tiny_m3_dir: Path, ray_local: None) -> None:
    from jobs.embed import main

    src = tmp_path / "docs"
    src.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2, 3], pa.int64()), "text": ["one", "two", "three"]}),
                   src / "a.parquet")
    (src / "b.jsonl").write_text('{"id": "1", "text": "the string one"}\n{"id": "x", "text": "ex"}\n')
    pq.write_table(pa.table({"id": pa.array([1.0, 4.5]), "text": ["float one", "float four and a half"]}),
                   src / "c.parquet")
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, batch={"max_tokens": 1024},
                       chunking={"overlap": 4}, milvus={"uri": str(tmp_path / "m.db"), "collection": "docs"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": str(tmp_path / "errors"),
                                                                           "max_error_ratio": 0.5})
    code = main(["--config", str(cfg), "--summary", str(tmp_path / "summary.json")])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert code == 3, s  # finished, with rejected input
    assert s["docs_read"] == 7 and s["docs_failed"] == 2
    assert s["duplicate_ids"] == 1  # 1 (a.parquet) and "1" (b.jsonl) are the same key
    assert len(s["id_kind_mismatch"]) == 1 and Path(s["id_kind_mismatch"][0]).name in ("a.parquet", "b.jsonl")
    assert {p.split("#")[0] for p in milvus_pks(tmp_path / "m.db")} == {"1", "2", "3", "x"}
    letters = [json.loads(line) for f in (tmp_path / "errors").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["row"] for r in letters if Path(r["shard"]).name == "c.parquet") == [0, 1]
    assert all("floating-point" in r["reason"] for r in letters)
