"""The vector math of :mod:`embedder.vectors`, in torch, on the forward pass' device.

Everything here works on fixed-size tensors (no boolean indexing, no ``.item()``), so on a GPU
it queues behind the forward pass without a host synchronization; only the final results
(dense ``[rows, dim]`` and the sparse CSR) are copied back. The numpy functions in
:mod:`embedder.vectors` are the reference these must equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def dense_vectors(emb: torch.Tensor, dim: int | None, *, normalize: bool) -> torch.Tensor:
    """float32 ``[rows, dim]``: normalize, Matryoshka cut to ``dim``, re-normalize (as vectors.truncate)."""
    import torch.nn.functional as F

    x = emb.float()
    if normalize:
        x = F.normalize(x, p=2.0, dim=1, eps=1e-12)
    if dim is not None and dim != x.shape[1]:
        if dim > x.shape[1]:
            raise ValueError(f"dense_dim {dim} is larger than the model's dimension {x.shape[1]}")
        x = x[:, :dim]
        x = F.normalize(x, p=2.0, dim=1, eps=1e-12) if normalize else x.contiguous()
    return x


@dataclass
class DeviceSparse:
    """Sparse vectors of a batch as fixed-size device tensors.

    Row ``i`` holds ``counts[i]`` entries; the entries of all rows come first in ``indices`` /
    ``values`` (by row, then token id), so ``indices[:counts.sum()]`` is the CSR payload.
    """

    counts: torch.Tensor  # int64 [rows]
    indices: torch.Tensor  # int32 [slots]
    values: torch.Tensor  # float32 [slots]


def sparse_vectors(ids: torch.Tensor, weights: torch.Tensor, row: torch.Tensor, valid: torch.Tensor, rows: int,
                   drop_ids: torch.Tensor, vocab: int, top_k: int | None = None) -> DeviceSparse:
    """BGE-M3 lexical weights: per row, the max weight of each token id, without special ids and zeros.

    Args:
        ids: int64 ``[tokens]``: token id of each position (flattened batch, padding included).
        weights: ``[tokens]``: ``relu(sparse_linear(h))`` of each position.
        row: int64 ``[tokens]``: the row each position belongs to.
        valid: bool ``[tokens]``: False on padding.
        rows: Rows in the batch.
        drop_ids: int64 ids to remove (CLS/BOS, EOS, PAD, UNK).
        vocab: Upper bound on token ids (keys are ``row * vocab + id``).
        top_k: Keep the ``top_k`` largest weights of each row (ties: smaller id first).
    """
    import torch

    n = ids.numel()
    w = weights.float()
    w = torch.where(valid & torch.isfinite(w), w, 0.0)  # a non-finite row is re-run or rejected by the caller
    keep = valid & (w > 0) & ~torch.isin(ids, drop_ids)
    sentinel = rows * vocab  # sorts after every real key
    key = torch.where(keep, row * vocab + ids, sentinel)
    key, order = torch.sort(key)
    w = w[order]
    first = torch.ones(n, dtype=torch.bool, device=ids.device)
    first[1:] = key[1:] != key[:-1]
    seg = torch.cumsum(first, 0) - 1  # run number of each sorted position
    ukey = torch.full((n,), sentinel, dtype=torch.int64, device=ids.device).scatter_(0, seg, key)
    uval = torch.zeros(n, dtype=torch.float32, device=ids.device).scatter_reduce(0, seg, w, "amax",
                                                                                 include_self=False)
    if top_k is not None:
        ukey, uval = _top_k(ukey, uval, rows, vocab, top_k)
    urow = torch.div(ukey, vocab, rounding_mode="floor")  # == rows for the sentinel
    counts = torch.zeros(rows + 1, dtype=torch.int64, device=ids.device)
    counts.scatter_add_(0, urow, torch.ones_like(urow))
    return DeviceSparse(counts=counts[:rows], indices=(ukey - urow * vocab).to(torch.int32), values=uval)


def _top_k(ukey: torch.Tensor, uval: torch.Tensor, rows: int, vocab: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k largest values of each row; the result is sorted by key again, sentinels last."""
    import torch

    sentinel = rows * vocab
    urow = torch.div(ukey, vocab, rounding_mode="floor")
    # Order by (row, value desc, id): ukey is sorted by (row, id), and both sorts are stable.
    by_value = torch.argsort(-uval, stable=True)
    order = by_value[torch.argsort(urow[by_value], stable=True)]
    srow = urow[order]
    per_row = torch.zeros(rows + 1, dtype=torch.int64, device=ukey.device).scatter_add_(0, urow, torch.ones_like(urow))
    starts = torch.cumsum(per_row, 0) - per_row
    rank = torch.arange(len(order), device=ukey.device) - starts[srow]
    kept = torch.where((rank < k) & (srow < rows), ukey[order], sentinel)
    key, back = torch.sort(kept)
    return key, torch.where(key < sentinel, uval[order][back], 0.0)


def bad_rows(dense: torch.Tensor, weights: torch.Tensor | None, row: torch.Tensor | None,
             valid: torch.Tensor | None, rows: int) -> torch.Tensor:
    """bool ``[rows]``: a row's dense vector or one of its real tokens' weights is NaN or inf.

    Padding positions are never looked at, so a half-precision overflow there cannot flag a row.
    """
    import torch

    bad = ~torch.isfinite(dense).all(dim=1)
    if weights is not None:
        token_bad = (~torch.isfinite(weights)) & valid
        per_row = torch.zeros(rows, dtype=torch.int64, device=dense.device)
        per_row.scatter_add_(0, row, token_bad.to(torch.int64))
        bad = bad | (per_row > 0)
    return bad
