"""embedder.vectors on hand-computed arrays, plus property tests against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.vectors import SparseBatch, non_finite_rows, normalize, sparse_reduce, truncate

# ---------------------------------------------------------------- normalize


def test_normalize_hand_computed() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0], [1.0, 1.0]], dtype=np.float32)
    got = normalize(x)
    want = np.array([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0], [2**-0.5, 2**-0.5]], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert np.all(np.isfinite(got)), "a zero row must stay zero, not become NaN"
    np.testing.assert_array_equal(x[0], [3.0, 4.0])  # input untouched


def test_normalize_unit_rows_unchanged() -> None:
    rng = np.random.default_rng(0)
    x = normalize(rng.normal(size=(5, 7)).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(normalize(x), x, atol=1e-7)


# ---------------------------------------------------------------- truncate


def test_truncate_keeps_prefix_and_renormalizes() -> None:
    x = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 5.0]], dtype=np.float32)  # norms 13 and sqrt(26)
    got = truncate(x, 2)
    np.testing.assert_allclose(got, [[0.6, 0.8], [1.0, 0.0]], atol=1e-7)
    raw = truncate(x, 2, renormalize=False)
    np.testing.assert_array_equal(raw, [[3.0, 4.0], [1.0, 0.0]])
    assert raw.flags["C_CONTIGUOUS"]


def test_truncate_none_or_full_dim_is_identity() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert truncate(x, None) is x
    assert truncate(x, 3) is x


def test_truncate_dim_too_large_names_both_numbers() -> None:
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"4.*3"):
        truncate(x, 4)


# ---------------------------------------------------------------- sparse_reduce


def test_sparse_reduce_hand_computed() -> None:
    # ids: 0 = CLS, 2 = EOS, 1 = PAD, 3 = UNK (dropped)
    ids = np.array([
        [0, 10, 11, 10, 3, 2, 1, 1],
        [0, 12, 12, 12, 13, 14, 15, 2],
        [0, 2, 1, 1, 1, 1, 1, 1],
    ])
    w = np.array([
        [9.0, 0.5, 0.25, 0.75, 8.0, 7.0, 6.0, 5.0],  # 10 appears twice: max 0.75; specials dropped
        [9.0, 0.1, 0.3, 0.2, 0.0, 0.4, 0.0, 9.0],  # 12 three times -> 0.3; zero weights dropped
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # only specials -> empty row
    ], dtype=np.float32)
    sb = sparse_reduce(ids, w, drop_ids=[0, 1, 2, 3])
    assert sb.row(0) == {10: 0.75, 11: 0.25}
    assert sb.row(1) == pytest.approx({12: 0.3, 14: 0.4})
    assert sb.row(2) == {}
    np.testing.assert_array_equal(sb.offsets, [0, 2, 4, 4])
    assert sb.offsets.dtype == np.int64 and sb.indices.dtype == np.int32 and sb.values.dtype == np.float32


def test_sparse_reduce_max_is_independent_of_position() -> None:
    ids = np.array([[5, 5, 5], [5, 5, 5]])
    w = np.array([[0.9, 0.1, 0.5], [0.1, 0.5, 0.9]], dtype=np.float32)
    sb = sparse_reduce(ids, w, drop_ids=[])
    assert sb.row(0) == pytest.approx({5: 0.9}) and sb.row(1) == pytest.approx({5: 0.9})


def test_sparse_reduce_top_k_keeps_largest_with_ties_to_smaller_id() -> None:
    ids = np.array([[20, 7, 9, 8, 30, 7], [4, 5, 6, 0, 0, 0]])
    w = np.array([[0.5, 0.1, 0.9, 0.5, 0.5, 0.2], [0.3, 0.2, 0.1, 0, 0, 0]], dtype=np.float32)
    sb = sparse_reduce(ids, w, drop_ids=[0], top_k=3)
    # row 0 weights: 9 -> .9, then a three-way tie at .5 among 8, 20, 30 -> 8 and 20 (smaller ids) win.
    assert sb.row(0) == pytest.approx({8: 0.5, 9: 0.9, 20: 0.5})
    assert sb.row(1) == pytest.approx({4: 0.3, 5: 0.2, 6: 0.1})  # fewer than k: all kept
    assert list(sb.indices[: sb.offsets[1]]) == [8, 9, 20], "indices must stay ascending after top-k"
    one = sparse_reduce(ids, w, drop_ids=[0], top_k=1)
    assert one.row(0) == pytest.approx({9: 0.9}) and one.row(1) == pytest.approx({4: 0.3})


def test_sparse_reduce_empty_batch() -> None:
    sb = sparse_reduce(np.zeros((0, 4), dtype=np.int64), np.zeros((0, 4), dtype=np.float32), drop_ids=[0])
    np.testing.assert_array_equal(sb.offsets, [0])
    assert len(sb.indices) == 0 and len(sb.values) == 0


def reference_reduce(ids: np.ndarray, w: np.ndarray, drop: set[int], top_k: int | None) -> list[dict[int, float]]:
    rows = []
    for r in range(ids.shape[0]):
        d: dict[int, float] = {}
        for t, v in zip(ids[r].tolist(), w[r].tolist()):
            if t in drop or v <= 0:
                continue
            d[t] = max(d.get(t, 0.0), v)
        if top_k is not None:
            keep = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
            d = dict(keep)
        rows.append(d)
    return rows


@settings(max_examples=150, deadline=None)
@given(data=st.data(), rows=st.integers(0, 6), seq=st.integers(1, 12), top_k=st.none() | st.integers(1, 5))
def test_sparse_reduce_matches_python_loop(data: st.DataObject, rows: int, seq: int, top_k: int | None) -> None:
    ids = np.array(data.draw(st.lists(st.lists(st.integers(0, 8), min_size=seq, max_size=seq),
                                      min_size=rows, max_size=rows)), dtype=np.int64).reshape(rows, seq)
    # Few distinct weight values: lots of duplicates and ties.
    w = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), min_size=seq, max_size=seq),
                                    min_size=rows, max_size=rows)), dtype=np.float32).reshape(rows, seq)
    drop = {0, 1, 2}
    sb = sparse_reduce(ids, w, drop_ids=sorted(drop), top_k=top_k)
    assert len(sb.offsets) == rows + 1
    want = reference_reduce(ids, w, drop, top_k)
    for r in range(rows):
        assert sb.row(r) == want[r]
        row_ids = sb.indices[sb.offsets[r]:sb.offsets[r + 1]]
        assert np.all(np.diff(row_ids) > 0), "indices ascending and unique within a row"
    assert np.all(sb.values > 0)


# ---------------------------------------------------------------- SparseBatch.take


def make_batch(rows: list[dict[int, float]]) -> SparseBatch:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.array([k for r in rows for k in sorted(r)], dtype=np.int32)
    values = np.array([r[k] for r in rows for k in sorted(r)], dtype=np.float32)
    return SparseBatch(offsets, indices, values)


def test_take_hand_computed() -> None:
    rows = [{1: 0.5, 4: 1.0}, {}, {2: 0.25}, {3: 0.75, 5: 0.5, 9: 2.0}]
    sb = make_batch(rows)
    got = sb.take(np.array([3, 0, 1, 3, 2]))
    assert [got.row(i) for i in range(5)] == [rows[3], rows[0], rows[1], rows[3], rows[2]]
    np.testing.assert_array_equal(got.offsets, [0, 3, 5, 5, 8, 9])
    empty = sb.take(np.array([], dtype=np.int64))
    np.testing.assert_array_equal(empty.offsets, [0])
    assert len(empty.indices) == 0


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.dictionaries(st.integers(0, 50), st.floats(0.5, 10, width=32), max_size=6), max_size=8),
       data=st.data())
def test_take_property(rows: list[dict[int, float]], data: st.DataObject) -> None:
    sb = make_batch(rows)
    order = data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=12)) if rows else []
    got = sb.take(np.array(order, dtype=np.int64))
    assert [got.row(i) for i in range(len(order))] == [sb.row(j) for j in order]


def test_non_finite_rows() -> None:
    x = np.array([[1.0, 2.0], [np.nan, 0.0], [0.0, 0.0], [np.inf, 1.0], [1.0, -np.inf]])
    np.testing.assert_array_equal(non_finite_rows(x), [1, 3, 4])
