"""Token-budget batch packing: sort by length, fill each batch up to a token budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_batches(lengths: Sequence[int] | np.ndarray, max_tokens: int, max_rows: int, *,
                 padded: bool = True) -> list[np.ndarray]:
    """Group row indices into batches that fit ``max_tokens``.

    Rows are taken longest first, so each batch holds rows of similar length and padding stays
    small. ``padded`` batches count ``rows x longest row`` against the budget; unpadded
    (packed) batches count real tokens only. A single row longer than the budget gets a batch
    of its own (callers keep rows within the model's limit, and the limit within the budget).

    Args:
        lengths: Token count of each row.
        max_tokens: The budget.
        max_rows: Upper bound on rows per batch.
        padded: Whether the forward pass pads rows to the longest (else it packs them).

    Returns:
        Arrays of row indices; every index appears in exactly one of them.

    Example:
        >>> [b.tolist() for b in pack_batches([2, 9, 3, 8], max_tokens=18, max_rows=8)]
        [[1, 3], [2, 0]]
        >>> [b.tolist() for b in pack_batches([2, 9, 3, 8], max_tokens=18, max_rows=8, padded=False)]
        [[1, 3], [2, 0]]
        >>> [b.tolist() for b in pack_batches([2, 9, 3, 4], max_tokens=18, max_rows=8, padded=False)]
        [[1, 3, 2, 0]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    n = len(order)
    csum = np.cumsum(lengths[order])
    batches: list[np.ndarray] = []
    start = 0
    while start < n:
        if padded:
            longest = max(int(lengths[order[start]]), 1)
            rows = min(max_tokens // longest, n - start)
        else:
            before = int(csum[start - 1]) if start else 0
            rows = int(np.searchsorted(csum, before + max_tokens, side="right")) - start
        rows = max(1, min(max_rows, rows))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def padding_efficiency(lengths: Sequence[int] | np.ndarray, batches: Sequence[np.ndarray]) -> tuple[int, int]:
    """Return (real tokens, padded tokens) of a padded packing; their ratio is the padding efficiency."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = int(lengths.sum())
    padded = int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))
    return real, padded
