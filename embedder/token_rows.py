"""Token id rows stored flat (CSR), and the two shapes a forward pass takes: padded and packed.

The embed actor receives ``input_ids`` as an Arrow list column, i.e. one flat id array plus
offsets; keeping that layout avoids a Python list of per-row arrays. Building a batch is a
handful of vectorized numpy gathers, with no loop over rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenRows:
    """Row ``i`` is ``flat[offsets[i]:offsets[i + 1]]``.

    Example:
        >>> rows = TokenRows.from_list([np.array([5, 6, 7]), np.array([8])])
        >>> ids, mask = rows.padded(np.array([1, 0]), pad_id=1)
        >>> ids.tolist(), mask.tolist()
        ([[8, 1, 1], [5, 6, 7]], [[1, 0, 0], [1, 1, 1]])
    """

    flat: np.ndarray  # integer token ids of every row, concatenated
    offsets: np.ndarray  # int64, len rows + 1, non-decreasing (an Arrow slice may start above 0)

    @classmethod
    def from_list(cls, rows: Sequence[np.ndarray]) -> TokenRows:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        flat = np.concatenate([np.asarray(r) for r in rows]) if len(rows) else np.zeros(0, dtype=np.int64)
        return cls(flat=flat, offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> TokenRows:
        """The rows ``rows``, in that order, as a new compact ``TokenRows``."""
        lay = self.layout(rows)
        offsets = np.concatenate([[0], np.cumsum(lay.lengths)]).astype(np.int64)
        return TokenRows(flat=self.flat[lay.src], offsets=offsets)

    def layout(self, rows: np.ndarray) -> Layout:
        """Where each token of ``rows`` comes from and where it goes (shared by both shapes)."""
        lengths = self.lengths[rows]
        total = int(lengths.sum())
        starts = (np.cumsum(lengths) - lengths).astype(np.int64)
        row = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        col = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
        src = np.repeat(self.offsets[rows], lengths) + col
        return Layout(lengths=lengths, row=row, col=col, src=src, width=int(lengths.max()) if len(rows) else 0)

    def padded(self, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``[len(rows), longest]`` ids (pad_id) and attention mask (int64)."""
        lay = self.layout(rows)
        ids = np.full((len(rows), lay.width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), lay.width), dtype=np.int64)
        ids[lay.row, lay.col] = self.flat[lay.src]
        mask[lay.row, lay.col] = 1
        return ids, mask

    def packed(self, rows: np.ndarray, position_offset: int = 0) -> Packed:
        """The rows concatenated without padding, with per-sequence positions and boundaries."""
        lay = self.layout(rows)
        cu = np.concatenate([[0], np.cumsum(lay.lengths)]).astype(np.int32)
        return Packed(ids=self.flat[lay.src].astype(np.int64), positions=lay.col + position_offset, cu_seqlens=cu,
                      max_len=lay.width, row=lay.row, col=lay.col)


@dataclass(frozen=True)
class Layout:
    """Token ``t`` of a batch is ``flat[src[t]]``, at row ``row[t]``, column ``col[t]``."""

    lengths: np.ndarray
    row: np.ndarray
    col: np.ndarray
    src: np.ndarray
    width: int


@dataclass(frozen=True)
class Packed:
    """One unpadded batch: ``ids[cu_seqlens[i]:cu_seqlens[i + 1]]`` is sequence ``i``."""

    ids: np.ndarray  # int64 [tokens]
    positions: np.ndarray  # int64 [tokens]: position within its sequence, plus the model's offset
    cu_seqlens: np.ndarray  # int32 [rows + 1]
    max_len: int
    row: np.ndarray  # int64 [tokens]: the sequence each token belongs to
    col: np.ndarray  # int64 [tokens]: the token's index within its sequence
