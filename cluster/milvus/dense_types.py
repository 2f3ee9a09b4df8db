"""``milvus.dense_type``: the Milvus field type, index and metric of each stored type, what a target supports,
and the conversion of vectors (written rows and queries) into it (the math is :mod:`embedder.quantize`).

| dense_type | field | index (server) | metric | server |
| --- | --- | --- | --- | --- |
| float32 | FLOAT_VECTOR | AUTOINDEX (HNSW on milvus-lite) | IP | any, and milvus-lite |
| float16 | FLOAT16_VECTOR | AUTOINDEX | IP | >= 2.4 |
| bfloat16 | BFLOAT16_VECTOR | AUTOINDEX | IP | >= 2.4 |
| int8 | INT8_VECTOR | HNSW | IP | >= 2.6 |
| binary | BINARY_VECTOR (dim bits) | BIN_IVF_FLAT | HAMMING | any |

milvus-lite 3.x stores FLOAT_VECTOR only, and ``milvus.mode: bulk_import`` writes float32 import
files only: both refuse the other types before anything is done (exit 2).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from pymilvus import DataType

from embedder import quantize as qz

FIELD_TYPE = {"float32": DataType.FLOAT_VECTOR, "float16": DataType.FLOAT16_VECTOR,
              "bfloat16": DataType.BFLOAT16_VECTOR, "int8": DataType.INT8_VECTOR, "binary": DataType.BINARY_VECTOR}
MIN_SERVER = {"float32": (2, 0), "float16": (2, 4), "bfloat16": (2, 4), "int8": (2, 6), "binary": (2, 0)}
HNSW_PARAMS = {"M": 16, "efConstruction": 200}
BIN_IVF_PARAMS = {"nlist": 1024}


def metric(dense_type: str) -> str:
    return "HAMMING" if dense_type == "binary" else "IP"


def index_params(dense_type: str, *, lite: bool) -> dict[str, Any]:
    """``add_index`` keyword arguments of the dense field."""
    if lite or dense_type == "int8":
        return {"index_type": "HNSW", "metric_type": "IP", "params": dict(HNSW_PARAMS)}
    if dense_type == "binary":
        return {"index_type": "BIN_IVF_FLAT", "metric_type": "HAMMING", "params": dict(BIN_IVF_PARAMS)}
    return {"index_type": "AUTOINDEX", "metric_type": "IP"}


def server_version(text: str | None) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string such as ``v2.6.3`` or ``2.5.0-rc1``; None when not one."""
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_supported(dense_type: str, dim: int, *, lite: bool, bulk: bool, version: str | None) -> None:
    """Raise a ValueError (exit 2) naming what to change when the target cannot store ``dense_type``."""
    qz.check_dim(dim, dense_type)
    if dense_type == "float32":
        return
    need = ".".join(map(str, MIN_SERVER[dense_type]))
    if lite:
        raise ValueError(f"milvus.dense_type {dense_type}: milvus-lite stores float32 vectors only. Use a Milvus "
                         f"server >= {need} (milvus.uri http://host:19530), or dense_type float32")
    if bulk:
        raise ValueError(f"milvus.dense_type {dense_type}: milvus.mode bulk_import writes float32 import files "
                         "only; use mode upsert for this type, or dense_type float32")
    have = server_version(version)
    if have is not None and have < MIN_SERVER[dense_type]:
        raise ValueError(f"milvus.dense_type {dense_type} needs a Milvus server >= {need}; this one is {version}. "
                         "Upgrade the server or choose another dense_type (float32 works everywhere)")


def encode_rows(matrix: np.ndarray, dense_type: str, scale: float | None = None) -> list[Any]:
    """One value per row as pymilvus takes it for the field: float lists (float32), float16 / bfloat16 /
    int8 numpy rows, or the packed bytes of a binary vector."""
    if dense_type == "float32":
        return np.asarray(matrix, np.float32).tolist()
    if dense_type == "bfloat16":
        import ml_dtypes

        return list(qz.stored(matrix, "bfloat16").view(ml_dtypes.bfloat16))
    if dense_type == "binary":
        return [row.tobytes() for row in qz.stored(matrix, "binary")]
    return list(qz.stored(matrix, dense_type, scale))


def encode_bytes(matrix: np.ndarray, dense_type: str, scale: float | None = None) -> bytes:
    """All rows' stored values as one little-endian buffer, row after row: the bytes an upsert request
    carries for the field (float32 values, float16 / bfloat16 / int8 values, or packed sign bits)."""
    if dense_type == "float32":
        return np.ascontiguousarray(matrix, dtype="<f4").tobytes()
    return np.ascontiguousarray(qz.stored(matrix, dense_type, scale)).tobytes()


def encode_query(vector: np.ndarray, dense_type: str, scale: float | None = None) -> Any:
    """A query vector as the search of a ``dense_type`` field takes it."""
    return encode_rows(np.asarray(vector, np.float32)[None, :], dense_type, scale)[0]


__all__ = ["FIELD_TYPE", "MIN_SERVER", "metric", "index_params", "check_supported", "encode_rows", "encode_bytes",
           "encode_query", "server_version"]
