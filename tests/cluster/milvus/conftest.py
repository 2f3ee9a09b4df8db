"""Fixtures of the Milvus tests: embedded milvus-lite per test, batches shaped like the embed stage's output."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cluster.settings import MilvusConfig
from tests.servers import LiteServer

DIM = 16
VOCAB = 1000


def _batch(n: int, *, dim: int = DIM, start: int = 0, seed: int = 0, sparse: bool = True,
           errors: dict[int, str] | None = None, metadata: bool = True, fixed_size: bool = False,
           text: Callable[[int], str] | None = None) -> pa.Table:
    """n chunks like the embed stage emits: doc d{i} chunk i%3, unit dense vectors, 3..8 sparse weights."""
    rng = np.random.default_rng(seed)
    ids = range(start, start + n)
    dense = rng.standard_normal((n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    flat = pa.array(dense.reshape(-1), pa.float32())
    dense_col = (pa.FixedSizeListArray.from_arrays(flat, dim) if fixed_size
                 else pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * dim, pa.int32()), flat))
    cols: dict[str, pa.Array] = {
        "pk": pa.array([f"d{i}#{i % 3}" for i in ids]),
        "doc_id": pa.array([f"d{i}" for i in ids]),
        "chunk_index": pa.array([i % 3 for i in ids], pa.int32()),
        "text": pa.array([text(i) if text else f"chunk {i} text" for i in ids]),
        "n_tokens": pa.array([10] * n, pa.int32()),
        "dense": dense_col,
        "_shard": pa.array(["s0.parquet"] * n),
        "_row": pa.array(list(ids), pa.int64()),
        "error": pa.array([(errors or {}).get(i) for i in ids], pa.string()),
    }
    if sparse:
        idx, val = [], []
        for i in ids:
            k = 3 + i % 6
            idx.append(sorted(rng.choice(VOCAB, k, replace=False).tolist()))
            val.append(rng.uniform(0.05, 1.0, k).astype(np.float32).tolist())
        cols["sparse_indices"] = pa.array(idx, pa.list_(pa.int32()))
        cols["sparse_values"] = pa.array(val, pa.list_(pa.float32()))
    if metadata:
        cols["lang"] = pa.array(["de" if i % 2 else "en" for i in ids])
        cols["year"] = pa.array([2000 + i % 20 for i in ids], pa.int64())
    return pa.table(cols)


@pytest.fixture()
def make_batch() -> Callable[..., pa.Table]:
    """Builds embed-stage batches (see ``_batch``)."""
    return _batch


@pytest.fixture()
def lite_cfg(tmp_path: Path) -> MilvusConfig:
    """A milvus-lite config in a fresh folder (nested, to check that parents are created)."""
    return MilvusConfig(uri=str(tmp_path / "nested" / "milvus.db"), collection="docs")


@pytest.fixture()
def lite_client(lite_cfg: MilvusConfig) -> Iterator[object]:
    """An embedded milvus-lite client; its in-process server is stopped afterwards."""
    from milvus_lite.server_manager import server_manager_instance

    from cluster.milvus.connect import connect

    client = connect(lite_cfg)
    try:
        yield client
    finally:
        client.close()
        server_manager_instance.release_server(lite_cfg.uri)


@pytest.fixture()
def lite_server(tmp_path: Path) -> Iterator[LiteServer]:
    """A running ``milvus-lite server`` subprocess, killed at the end."""
    server = LiteServer(tmp_path / "server-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
