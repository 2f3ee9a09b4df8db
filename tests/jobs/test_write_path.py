"""The write path: writer actors write the rows; the driver only ever fetches small per-shard records."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.milvus.strict import journal_counts
from tests.jobs.conftest import write_config
from tests.reliability.conftest import milvus_pks

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from walk(v)


def test_rows_are_written_by_the_writers_and_only_records_reach_the_driver(
        tmp_path: Path, tiny_m3_dir: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from jobs.embed import main

    src = tmp_path / "docs"
    src.mkdir()
    for k in range(4):
        ids = [f"s{k}-d{i}" for i in range(60)]
        pq.write_table(pa.table({"id": ids, "text": [f"Document {d} about routers and bicycles." for d in ids]}),
                       src / f"part-{k}.parquet")
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "precision": "fp32"}, batch={"max_tokens": 1024},
                       chunking={"overlap": 4}, cluster={"writers": 2, "rows_per_task": 32},
                       milvus={"uri": str(tmp_path / "m.db"), "collection": "docs",
                               "write_journal": str(tmp_path / "journal")},
                       checkpoint={"uri": str(tmp_path / "state"), "record_every_s": 1}, errors={"uri": None})

    fetched: list[Any] = []  # everything the driver process pulls out of Ray during the run
    real_get = ray.get

    def spy(refs: Any, *args: Any, **kwargs: Any) -> Any:
        out = real_get(refs, *args, **kwargs)
        fetched.append(out)
        return out

    monkeypatch.setattr(ray, "get", spy)
    code = main(["--config", str(cfg), "--summary", str(tmp_path / "summary.json")])
    monkeypatch.setattr(ray, "get", real_get)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["rows_written"] == 240

    values = [v for f in fetched for v in walk(f)]
    heavy = [type(v).__name__ for v in values
             if isinstance(v, (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray, np.ndarray))]
    assert not heavy, f"the driver fetched data: {heavy[:5]}"
    records = [v for v in values if isinstance(v, dict) and "shards" in v and "incarnation" in v]
    assert records, "no writer record reached the driver"
    assert {r["writer"] for r in records} == {0, 1}  # both writers wrote
    assert sum(c.get("rows_written", 0) for r in records for c in r["shards"].values()) == 240
    assert max(len(pickle.dumps(r)) for r in records) < 4096  # counts per shard, not rows
    pks = milvus_pks(tmp_path / "m.db")
    assert len(pks) == len(set(pks)) == 240
    writes = journal_counts(str(tmp_path / "journal"))  # per key: a block written twice would show here
    assert len(writes) == 240 and set(writes.values()) == {1}
