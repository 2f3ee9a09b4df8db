"""The storage audit of ``jobs.evaluate``: dense retrieval per dimension x stored vector type, and its bytes.

For each audited dimension (Matryoshka cut, re-normalised) and each type of
:mod:`embedder.quantize` (float32, float16, bfloat16, int8 calibrated on the documents, binary,
binary re-ranked with a float32 copy), the documents are stored as that type and searched exactly
(a FLAT search: the type's own loss, no index error); recall@1, recall@10 and MRR@10 are averaged
like the rest of the report and compared with float32 at the full dimension. Bytes per million
vectors: the vectors alone, and with an HNSW (M=16: 2 x M neighbour ids of 4 bytes per vector on
layer 0) or an IVF_FLAT index (8 bytes of id per vector; the centroids are negligible).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedder import evaluation as ev
from embedder import quantize as qz

#: Types audited: the stored types, and binary re-ranked with a float32 copy kept beside it.
AUDIT_TYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8", "binary", "binary+rescore")
HNSW_M = 16
MILLION = 1_000_000


def bytes_per_million(dim: int, dense_type: str) -> dict[str, int]:
    """Vectors, and vectors plus an HNSW / IVF_FLAT index, for a million vectors of ``dim`` as ``dense_type``."""
    stored = dense_type.split("+")[0]
    vectors = qz.bytes_per_vector(dim, stored) * MILLION
    if dense_type.endswith("+rescore"):
        vectors += qz.bytes_per_vector(dim, "float32") * MILLION  # the float32 copy the re-ranking reads
    return {"vectors": vectors, "hnsw": vectors + 2 * HNSW_M * 4 * MILLION, "ivf_flat": vectors + 8 * MILLION}


def storage_audit(dims: Sequence[int], full_dim: int, queries: np.ndarray, docs: np.ndarray,
                  metrics_of: Callable[[np.ndarray], dict[str, Any]], *, configured: tuple[int, str],
                  types: Sequence[str] = AUDIT_TYPES, groups: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per (dimension, type): the headline dense metrics, their drop and the bytes.

    Args:
        dims: Dimensions to audit.
        full_dim: The model's dimension (float32 at it is the reference).
        queries, docs: Full-dimension float32 vectors (queries, document chunks).
        metrics_of: Chunk score matrix -> the headline averages (``{"recall@1": ..., ...}``).
        configured: ``(model.dense_dim or full, milvus.dense_type)`` of the config, marked in the rows.
        types: The types to audit.
        groups: Per document chunk, the collection it is searched in (its language): re-ranking takes
            its candidates per group, as a search of that collection would. None: one collection.
    """
    reference = None
    rows = []
    for dim in sorted(set(dims) | {full_dim}, reverse=True):
        q, d = ev.matryoshka(queries, dim), ev.matryoshka(docs, dim)
        scale = qz.int8_scale(d)
        for kind in types:
            stored = kind.split("+")[0]
            if stored == "binary" and dim % 8:
                continue
            if kind.endswith("+rescore"):
                chunk_scores = _rescored(q, d, groups)
            else:
                chunk_scores = qz.scores(q, d, stored, scale=scale if stored == "int8" else None)
            head = metrics_of(chunk_scores)
            if reference is None:  # float32 at the full dimension comes first
                reference = head
            extra = {"int8_scale": round(scale, 4)} if stored == "int8" else {}
            rows.append({"dim": dim, "type": kind, **head, "recall@10_drop": ev.recall_drop(reference, head), **extra,
                         "bytes_per_million": bytes_per_million(dim, kind),
                         "configured": (dim, stored) == configured and not kind.endswith("+rescore")})
    return rows


def _rescored(q: np.ndarray, d: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Binary search re-ranked with the float32 copy, the candidates taken within each group's documents."""
    if groups is None:
        return qz.scores(q, d, "binary", rescore_docs=d)
    out = np.full((len(q), len(d)), -np.inf, dtype=np.float32)
    for g in np.unique(groups):
        cols = np.flatnonzero(groups == g)
        out[:, cols] = qz.scores(q, d[cols], "binary", rescore_docs=d[cols])
    return out


def human_bytes(n: int) -> str:
    """``n`` bytes as GB, MB or B (the report's unit)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def format_storage_audit(rows: list[dict[str, Any]], scope: str) -> list[str]:
    """The console table of :func:`storage_audit`."""
    lines = [f"Storage audit ({scope} dense averages, exact search over the stored type; bytes per million vectors)",
             f"{'dim':>5} {'type':<15} {'R@1':>5} {'R@10':>5} {'MRR10':>5} {'R@10 drop':>9}  "
             f"{'vectors':>9} {'+HNSW':>9} {'+IVF_FLAT':>9}"]
    for r in rows:
        mark = "  <- configured" if r["configured"] else ""
        if "int8_scale" in r:
            mark += f"  (milvus.int8_scale {r['int8_scale']})"
        b = r["bytes_per_million"]
        lines.append(f"{r['dim']:>5} {r['type']:<15} " + " ".join(f"{r[k]:5.3f}" for k in ev.METRICS)
                     + f" {r['recall@10_drop']:>+9.3f}  {human_bytes(b['vectors']):>9} {human_bytes(b['hnsw']):>9} "
                     f"{human_bytes(b['ivf_flat']):>9}{mark}")
    return lines


__all__ = ["AUDIT_TYPES", "bytes_per_million", "human_bytes", "storage_audit", "format_storage_audit"]
