"""embedder.device_vectors (torch, the code that runs on the GPU) against the numpy references of embedder.vectors.

On CPU the same torch code runs as on a GPU, so equality here is equality of the device path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.device_vectors import bad_rows, dense_vectors, sparse_vectors
from embedder.vectors import normalize, sparse_reduce, truncate

DROP = [0, 1, 2, 3]  # CLS, PAD, EOS, UNK


def device_sparse(ids: np.ndarray, weights: np.ndarray, mask: np.ndarray, top_k: int | None = None,
                  vocab: int = 50) -> list[dict[int, float]]:
    """Run sparse_vectors on a padded [rows, seq] batch and read the CSR back as dicts."""
    rows, seq = ids.shape
    out = sparse_vectors(torch.from_numpy(ids.astype(np.int64)).view(-1), torch.from_numpy(weights).view(-1),
                         torch.arange(rows).repeat_interleave(seq), torch.from_numpy(mask.astype(bool)).view(-1),
                         rows, torch.tensor(DROP), vocab, top_k)
    counts = out.counts.numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    idx, val = out.indices.numpy(), out.values.numpy()
    assert (np.diff(idx[: offsets[-1]])[np.diff(np.repeat(np.arange(rows), counts)) == 0] > 0).all(), \
        "ids ascending within a row"
    return [dict(zip(idx[a:b].tolist(), val[a:b].tolist())) for a, b in zip(offsets[:-1], offsets[1:])]


def reference(ids: np.ndarray, weights: np.ndarray, mask: np.ndarray, top_k: int | None = None) -> list[dict]:
    ref = sparse_reduce(ids, np.where(mask.astype(bool), weights, 0.0), DROP, top_k)
    return [ref.row(i) for i in range(ids.shape[0])]


def test_sparse_hand_computed() -> None:
    ids = np.array([[0, 7, 9, 7, 2, 1], [0, 9, 3, 5, 2, 1], [0, 2, 1, 1, 1, 1]])
    w = np.array([[9.0, 0.5, 0.25, 0.75, 9.0, 9.0],  # 7 twice: max 0.75
                  [9.0, 0.0, 8.0, 0.125, 9.0, 9.0],  # 9 has weight 0 (dropped), 3 = UNK
                  [9.0, 9.0, 9.0, 9.0, 9.0, 9.0]], dtype=np.float32)  # only specials
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    assert device_sparse(ids, w, mask) == [{7: 0.75, 9: 0.25}, {5: 0.125}, {}]


def test_sparse_ignores_padding_even_when_it_is_inf_or_nan() -> None:
    ids = np.array([[0, 7, 8, 2, 7, 9]])
    w = np.array([[1.0, 0.5, 0.25, 1.0, np.inf, np.nan]], dtype=np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    assert device_sparse(ids, w, mask) == [{7: 0.5, 8: 0.25}]
    dense = torch.ones(1, 4)
    assert not bad_rows(dense, torch.from_numpy(w).view(-1), torch.zeros(6, dtype=torch.int64),
                        torch.from_numpy(mask.astype(bool)).view(-1), 1).any()
    mask[0, 4] = 1  # the inf is now a real token's weight: the row is flagged
    assert bad_rows(dense, torch.from_numpy(w).view(-1), torch.zeros(6, dtype=torch.int64),
                    torch.from_numpy(mask.astype(bool)).view(-1), 1).tolist() == [True]


def test_sparse_top_k_ties_take_the_smaller_id() -> None:
    ids = np.array([[0, 9, 8, 7, 6, 2]])
    w = np.array([[1.0, 0.5, 0.5, 0.25, 0.5, 1.0]], dtype=np.float32)
    mask = np.ones_like(ids)
    assert device_sparse(ids, w, mask, top_k=2) == reference(ids, w, mask, top_k=2) == [{6: 0.5, 8: 0.5}]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), rows=st.integers(1, 6), seq=st.integers(1, 12), top_k=st.one_of(st.none(), st.integers(1, 5)))
def test_sparse_equals_numpy_reference(data: st.DataObject, rows: int, seq: int, top_k: int | None) -> None:
    ids = np.array(data.draw(st.lists(st.integers(0, 12), min_size=rows * seq, max_size=rows * seq))).reshape(rows, seq)
    # Few distinct weights, zeros and negatives-turned-zero included, so ties and drops happen.
    w = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.5, 3.0]), min_size=rows * seq,
                                    max_size=rows * seq)), dtype=np.float32).reshape(rows, seq)
    lengths = data.draw(st.lists(st.integers(0, seq), min_size=rows, max_size=rows))
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    assert device_sparse(ids, w, mask, top_k) == reference(ids, w, mask, top_k)


@pytest.mark.parametrize("dim", [None, 5, 2])
@pytest.mark.parametrize("norm", [True, False])
def test_dense_equals_numpy_reference(dim: int | None, norm: bool) -> None:
    x = np.random.default_rng(3).normal(size=(7, 5)).astype(np.float32)
    x[2] = 0.0  # a zero row stays zero
    want = truncate(normalize(x) if norm else x, dim, renormalize=norm)
    got = dense_vectors(torch.from_numpy(x).to(torch.bfloat16).float(), dim, normalize=norm).numpy()
    want_bf = truncate(normalize(torch.from_numpy(x).to(torch.bfloat16).float().numpy()) if norm else
                       torch.from_numpy(x).to(torch.bfloat16).float().numpy(), dim, renormalize=norm)
    np.testing.assert_allclose(got, want_bf, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == want.shape and got.flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match=r"6.*5"):
        dense_vectors(torch.from_numpy(x), 6, normalize=norm)


def test_bad_rows_dense() -> None:
    dense = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [float("inf"), 1.0]])
    assert bad_rows(dense, None, None, None, 3).tolist() == [False, True, True]
