"""TokenRows (flat rows -> padded or packed batches) and packing by real tokens, against plain-Python references."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.batching import pack_batches
from embedder.token_rows import TokenRows

row_lists = st.lists(st.lists(st.integers(2, 99), min_size=1, max_size=9), min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(rows=row_lists, data=st.data())
def test_padded_and_packed_equal_the_rows(rows: list[list[int]], data: st.DataObject) -> None:
    tr = TokenRows.from_list([np.array(r, dtype=np.int32) for r in rows])
    pick = np.array(data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=len(rows), unique=True)))
    ids, mask = tr.padded(pick, pad_id=1)
    width = max(len(rows[i]) for i in pick)
    assert ids.shape == mask.shape == (len(pick), width)
    for k, i in enumerate(pick):
        assert ids[k].tolist() == rows[i] + [1] * (width - len(rows[i]))
        assert mask[k].tolist() == [1] * len(rows[i]) + [0] * (width - len(rows[i]))
    p = tr.packed(pick, position_offset=2)
    assert p.ids.tolist() == [t for i in pick for t in rows[i]]
    assert p.positions.tolist() == [2 + j for i in pick for j in range(len(rows[i]))]
    assert p.cu_seqlens.tolist() == np.cumsum([0] + [len(rows[i]) for i in pick]).tolist()
    assert p.max_len == width and p.cu_seqlens.dtype == np.int32
    # row/col put each packed token back at its padded position
    assert (ids[p.row, p.col] == p.ids).all()
    taken = tr.take(pick)
    assert [taken.flat[a:b].tolist() for a, b in zip(taken.offsets[:-1], taken.offsets[1:])] == [rows[i] for i in pick]


def test_rows_of_an_arrow_slice_with_nulls() -> None:
    """Offsets as an Arrow slice hands them over (not starting at 0, null rows of length 0)."""
    import pyarrow as pa

    col = pa.array([[5, 6], None, [7], [8, 9, 10]], pa.list_(pa.int32())).slice(1)
    tr = TokenRows(flat=col.values.to_numpy(), offsets=col.offsets.to_numpy().astype(np.int64))
    assert tr.lengths.tolist() == [0, 1, 3]
    assert tr.take(np.array([2, 1])).flat.tolist() == [8, 9, 10, 7]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 600), max_size=80), max_tokens=st.integers(1, 3000), max_rows=st.integers(1, 40))
def test_unpadded_packing_counts_real_tokens(lengths: list[int], max_tokens: int, max_rows: int) -> None:
    batches = pack_batches(lengths, max_tokens, max_rows, padded=False)
    arr = np.asarray(lengths, dtype=np.int64)
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_rows
        assert len(b) == 1 or arr[b].sum() <= max_tokens
    for b, nxt in zip(batches[:-1], batches[1:]):  # greedy: the next row would not have fitted
        assert len(b) == max_rows or arr[b].sum() + arr[nxt[0]] > max_tokens
    # Never more batches than padded packing needs.
    assert len(batches) <= len(pack_batches(lengths, max_tokens, max_rows))


def test_no_rows() -> None:
    tr = TokenRows.from_list([np.array([5, 6])])
    none = np.zeros(0, dtype=np.int64)
    assert len(tr.take(none)) == 0 and tr.padded(none, 1)[0].shape == (0, 0)
    assert tr.packed(none).cu_seqlens.tolist() == [0]
    assert len(TokenRows.from_list([])) == 0
