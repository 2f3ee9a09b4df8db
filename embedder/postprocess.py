"""Stage 3 (CPU or GPU host): Matryoshka cut, re-normalization and sparse reduction of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedder.forward import ForwardOutput
from embedder.vectors import SparseBatch, non_finite_rows, normalize, sparse_reduce, truncate


@dataclass
class PostProcessed:
    """Final vectors of a batch; rows listed in ``bad_rows`` must not be written."""

    dense: np.ndarray
    sparse: SparseBatch | None
    bad_rows: np.ndarray


def postprocess(out: ForwardOutput, *, dense_dim: int | None, normalize_dense: bool, special_ids: list[int],
                sparse_top_k: int | None) -> PostProcessed:
    """Turn raw model outputs into the vectors that are stored."""
    dense = out.dense
    bad = non_finite_rows(dense)
    if normalize_dense:
        dense = normalize(dense)
    dense = truncate(dense, dense_dim, renormalize=normalize_dense)
    sparse = None
    if out.token_weights is not None:
        weights = out.token_weights
        sparse_bad = non_finite_rows(weights)
        bad = np.union1d(bad, sparse_bad)
        sparse = sparse_reduce(out.input_ids, np.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0),
                               special_ids, sparse_top_k)
    return PostProcessed(dense=np.ascontiguousarray(dense, dtype=np.float32), sparse=sparse, bad_rows=bad)
