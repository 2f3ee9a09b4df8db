"""Split a token sequence into overlapping windows (long documents)."""

from __future__ import annotations


def windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` windows of at most ``size`` tokens covering ``range(n_tokens)``.

    Consecutive windows share exactly ``overlap`` tokens (the last one may share more, so
    that it is not a tiny tail); the result depends only on the arguments.

    Example:
        >>> windows(10, 4, 1)
        [(0, 4), (3, 7), (6, 10)]
    """
    if size <= overlap:
        raise ValueError(f"window size {size} must be larger than overlap {overlap}")
    if n_tokens <= size:
        return [(0, n_tokens)]
    step = size - overlap
    spans = []
    start = 0
    while True:
        end = start + size
        if end >= n_tokens:
            spans.append((max(0, n_tokens - size), n_tokens))
            break
        spans.append((start, end))
        start += step
    return spans
