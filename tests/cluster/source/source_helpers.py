"""Helpers for the source tests: writing shards and reading them back."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.settings import SourceConfig
from cluster.source import Shard, list_shards, read_shard


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    """Rows as JSON lines; bytes/str items are written as raw lines."""
    out = []
    for row in rows:
        if isinstance(row, bytes):
            out.append(row)
        elif isinstance(row, str):
            out.append(row.encode("utf-8"))
        else:
            out.append(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    return b"\n".join(out) + b"\n"


def write_jsonl(path: Path, rows: Iterable[Any], gz: bool = False) -> Path:
    data = jsonl_bytes(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_parquet(path: Path, columns: dict[str, Any], row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def shard_of(path: Path | str, fmt: str | None = None) -> Shard:
    p = Path(path)
    fmt = fmt or ("jsonl.gz" if p.name.endswith(".gz") else "parquet" if p.suffix == ".parquet" else "jsonl")
    return Shard(path=str(p), format=fmt, size=p.stat().st_size, version="test")


def read_all(shard: Shard, cfg: SourceConfig) -> list[dict[str, Any]]:
    return [row for table in read_shard(shard, cfg) for row in table.to_pylist()]


def read_source(cfg: SourceConfig) -> list[dict[str, Any]]:
    return [row for shard in list_shards(cfg) for row in read_all(shard, cfg)]
