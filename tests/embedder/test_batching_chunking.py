"""Property tests of token-budget packing (embedder.batching) and windowing (embedder.chunking)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.batching import pack_batches, padding_efficiency
from embedder.chunking import windows

# ---------------------------------------------------------------- pack_batches


def test_pack_batches_docstring_example() -> None:
    assert [b.tolist() for b in pack_batches([2, 9, 3, 8], max_tokens=18, max_rows=8)] == [[1, 3], [2, 0]]


def test_pack_batches_empty() -> None:
    assert pack_batches([], max_tokens=10, max_rows=4) == []
    assert padding_efficiency([], []) == (0, 0)


def test_pack_batches_row_over_budget_gets_its_own_batch() -> None:
    batches = pack_batches([5, 100, 5, 5], max_tokens=20, max_rows=8)
    assert [b.tolist() for b in batches] == [[1], [0, 2, 3]]
    assert padding_efficiency([5, 100, 5, 5], batches) == (115, 115)


def test_padding_efficiency_hand_computed() -> None:
    lengths = [3, 5, 1, 4]
    assert padding_efficiency(lengths, [np.array([1, 3]), np.array([0, 2])]) == (13, 2 * 5 + 2 * 3)


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 600), max_size=80), max_tokens=st.integers(1, 3000),
       max_rows=st.integers(1, 40))
def test_pack_batches_properties(lengths: list[int], max_tokens: int, max_rows: int) -> None:
    batches = pack_batches(lengths, max_tokens, max_rows)
    arr = np.asarray(lengths, dtype=np.int64)
    # Every index exactly once.
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    longest = [int(arr[b].max()) for b in batches]
    for b, top in zip(batches, longest):
        assert 1 <= len(b) <= max_rows
        if len(b) > 1:  # padded size within budget, unless one row alone is longer than it
            assert len(b) * top <= max_tokens
    # Longest rows first, and greedy: a batch is closed only when the next row would not fit.
    assert longest == sorted(longest, reverse=True)
    for b, top in zip(batches[:-1], longest[:-1]):
        assert len(b) == max_rows or (len(b) + 1) * max(top, 1) > max_tokens
    # padding_efficiency agrees with the packing.
    real, padded = padding_efficiency(lengths, batches)
    assert real == sum(lengths)
    assert padded == sum(len(b) * top for b, top in zip(batches, longest))
    assert real <= padded


# ---------------------------------------------------------------- windows


def test_windows_docstring_example() -> None:
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]


def test_windows_last_window_overlaps_more_instead_of_tiny_tail() -> None:
    # step 3: (0,4) (3,7) then a tail of 1 token would remain -> last window pulled back to (4, 8).
    assert windows(8, 4, 1) == [(0, 4), (3, 7), (4, 8)]


def test_windows_short_input_is_one_window() -> None:
    assert windows(0, 4, 1) == [(0, 0)]
    assert windows(3, 4, 1) == [(0, 3)]
    assert windows(4, 4, 3) == [(0, 4)]


@pytest.mark.parametrize(("size", "overlap"), [(4, 4), (4, 5), (0, 0)])
def test_windows_size_must_exceed_overlap(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="overlap"):
        windows(10, size, overlap)


@settings(max_examples=400, deadline=None)
@given(n=st.integers(0, 5000), size=st.integers(1, 700), data=st.data())
def test_windows_properties(n: int, size: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, size - 1), label="overlap")
    spans = windows(n, size, overlap)
    assert spans == windows(n, size, overlap), "deterministic"
    assert spans[0][0] == 0 and spans[-1][1] == n
    for a, b in spans:
        assert 0 <= a <= b <= n
        assert b - a <= size
        if n >= size:
            assert b - a == size
    # Every token is covered: no gap between consecutive windows.
    covered = np.zeros(n, dtype=bool)
    for a, b in spans:
        covered[a:b] = True
    assert covered.all()
    starts = [a for a, _ in spans]
    assert starts == sorted(set(starts)), "windows strictly advance"
    # Consecutive windows share exactly `overlap` tokens; the last pair may share more.
    shared = [spans[k][1] - spans[k + 1][0] for k in range(len(spans) - 1)]
    assert all(s == overlap for s in shared[:-1])
    if shared:
        assert overlap <= shared[-1] < size
    # As few windows as possible: each window adds at most size - overlap new tokens.
    expected = 1 if n <= size else math.ceil((n - overlap) / (size - overlap))
    assert len(spans) == expected
