"""Pure vector math on numpy arrays: Matryoshka truncation, normalization, sparse reduction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalize rows (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def truncate(x: np.ndarray, dim: int | None, *, renormalize: bool = True) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dim`` components, then re-normalize."""
    if dim is None or dim == x.shape[1]:
        return x
    if dim > x.shape[1]:
        raise ValueError(f"dense_dim {dim} is larger than the model's dimension {x.shape[1]}")
    cut = x[:, :dim]
    return normalize(cut) if renormalize else np.ascontiguousarray(cut)


@dataclass(frozen=True)
class SparseBatch:
    """CSR-style sparse vectors of a batch: row i is ``indices/values[offsets[i]:offsets[i+1]]``."""

    offsets: np.ndarray  # int64, len rows + 1
    indices: np.ndarray  # int32 token ids, ascending within a row
    values: np.ndarray  # float32 weights > 0

    def row(self, i: int) -> dict[int, float]:
        """Row ``i`` as a ``{token_id: weight}`` dict (for tests and small tools, not the hot path)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return dict(zip(self.indices[a:b].tolist(), self.values[a:b].tolist()))

    def take(self, rows: np.ndarray) -> SparseBatch:
        """The sparse vectors of ``rows``, in that order."""
        lengths = np.diff(self.offsets)[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Position j of the output reads self.offsets[row] + (j - offsets[k]) for the row k it falls in.
        gather = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return SparseBatch(offsets, self.indices[gather], self.values[gather])


def sparse_reduce(
    token_ids: np.ndarray,
    weights: np.ndarray,
    drop_ids: np.ndarray | list[int],
    top_k: int | None = None,
) -> SparseBatch:
    """BGE-M3 lexical weights: per row, the max weight of each token id, without special ids and zeros.

    Vectorized over the whole batch (one sort, no Python loop over rows).

    Args:
        token_ids: ``[rows, seq]`` token ids (padding included).
        weights: ``[rows, seq]`` per-token weights, already ``relu``-ed.
        drop_ids: Ids to remove (CLS/BOS, EOS, PAD, UNK).
        top_k: Keep the ``top_k`` largest weights of each row.
    """
    rows, seq = token_ids.shape
    ids = token_ids.astype(np.int64).ravel()
    w = weights.astype(np.float32).ravel()
    row = np.repeat(np.arange(rows, dtype=np.int64), seq)
    keep = (w > 0) & ~np.isin(ids, np.asarray(drop_ids, dtype=np.int64))
    ids, w, row = ids[keep], w[keep], row[keep]
    # Sort by (row, id, weight desc): the first entry of each (row, id) run is its max.
    order = np.lexsort((-w, ids, row))
    ids, w, row = ids[order], w[order], row[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = (ids[1:] != ids[:-1]) | (row[1:] != row[:-1])
    ids, w, row = ids[first], w[first], row[first]
    if top_k is not None:
        ids, w, row = _top_k_per_row(ids, w, row, top_k)
    counts = np.bincount(row, minlength=rows)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SparseBatch(offsets, ids.astype(np.int32), w)


def _top_k_per_row(ids: np.ndarray, w: np.ndarray, row: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Keep the k largest weights of each row (ties: smaller id first); output sorted by (row, id)."""
    order = np.lexsort((ids, -w, row))
    row_sorted = row[order]
    starts = np.searchsorted(row_sorted, row_sorted, side="left")
    rank = np.arange(len(order)) - starts
    kept = np.sort(order[rank < k])  # back to (row, id) order
    return ids[kept], w[kept], row[kept]


def non_finite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of rows holding NaN or inf."""
    return np.flatnonzero(~np.isfinite(x).all(axis=1))
