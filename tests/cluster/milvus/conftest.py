"""Fixtures of the Milvus tests: embedded milvus-lite per test, batches shaped like the embed stage's output."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cluster.settings import MilvusConfig

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiteServer:
    """A ``milvus-lite server`` subprocess on a loopback port (can be stopped and started again)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "milvus_lite"]
        self.proc = subprocess.Popen([*cmd, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--max-workers", "4"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"milvus-lite server did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture()
def lite_server(tmp_path: Path) -> Iterator[LiteServer]:
    """A running ``milvus-lite server`` subprocess, killed at the end."""
    server = LiteServer(tmp_path / "server-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
