"""The storage audit's re-ranked binary search takes its candidates within each searched collection."""

from __future__ import annotations

import numpy as np

from jobs.storage_audit import _rescored


def test_rescoring_candidates_are_taken_per_collection_not_over_all_of_them() -> None:
    rng = np.random.default_rng(0)
    # 150 German documents all close to the query, and 5 English ones: one of them the relevant one.
    query = rng.standard_normal(64).astype(np.float32)
    german = query + 0.3 * rng.standard_normal((150, 64)).astype(np.float32)
    english = rng.standard_normal((5, 64)).astype(np.float32)
    english[2] = query + 0.9 * rng.standard_normal(64).astype(np.float32)
    docs = np.vstack([german, english])
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q = (query / np.linalg.norm(query))[None, :]
    groups = np.array(["de"] * 150 + ["en"] * 5, dtype=object)
    pooled = _rescored(q, docs, None)  # one pool: the 100 candidates are all German, English gets -inf
    assert np.isneginf(pooled[0, 150:]).all()
    per_language = _rescored(q, docs, groups)  # searching the English documents finds the relevant one
    assert np.isfinite(per_language[0, 150:]).all() and int(np.argmax(per_language[0, 150:])) == 2
    exact = docs[150:] @ q[0]
    np.testing.assert_allclose(per_language[0, 150:], exact, rtol=1e-6)
