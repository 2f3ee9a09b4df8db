"""Stored vector types: conversions and the exact search of each (embedder.quantize)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from embedder import quantize as qz


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_bfloat16_bits_round_to_nearest_like_ml_dtypes() -> None:
    x = np.concatenate([unit(50, 64).ravel(), np.array([1.0, -2.5, 3.0e-39, 65504.0], np.float32)])
    assert np.array_equal(qz.to_bfloat16_bits(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    assert np.allclose(qz.from_bfloat16_bits(qz.to_bfloat16_bits(x)), x, rtol=2 ** -8)


def test_int8_keeps_inner_product_ranking_up_to_rounding() -> None:
    docs, queries = unit(500, 128), unit(20, 128, seed=1)
    scale = qz.int8_scale(docs)
    assert 127 / scale <= np.abs(docs).max() and 127 / scale > np.quantile(np.abs(docs), 0.999)
    exact = queries @ docs.T
    approx = qz.scores(queries, docs, "int8", scale=scale)
    assert np.corrcoef(exact.ravel(), approx.ravel())[0, 1] > 0.999
    assert np.mean(exact.argmax(1) == approx.argmax(1)) >= 0.95
    with pytest.raises(ValueError, match="all zero"):
        qz.int8_scale(np.zeros((3, 4)))


def test_binary_is_sign_bits_with_hamming_and_rescoring_restores_the_top_hit() -> None:
    docs, queries = unit(300, 64), unit(10, 64, seed=2)
    packed = qz.to_binary(docs)
    assert packed.shape == (300, 8) and packed.dtype == np.uint8
    assert np.array_equal(np.unpackbits(packed, axis=1).astype(bool), docs > 0)
    naive = np.array([[np.sum((q > 0) != (d > 0)) for d in docs] for q in queries])
    assert np.array_equal(qz.hamming(qz.to_binary(queries), packed), naive)
    rescored = qz.scores(queries, docs, "binary", rescore_docs=docs, k=10)
    exact = queries @ docs.T
    top = rescored.argmax(1)
    assert np.isfinite(rescored).sum(1).tolist() == [100] * 10  # RESCORE_FACTOR x k candidates each
    assert np.allclose(rescored[np.arange(10), top], exact[np.arange(10), top])
    with pytest.raises(ValueError, match="multiple of 8"):
        qz.check_dim(12, "binary")


def test_bytes_per_vector() -> None:
    assert [qz.bytes_per_vector(1024, t) for t in qz.DENSE_TYPES] == [4096, 2048, 2048, 1024, 128]
