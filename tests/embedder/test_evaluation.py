"""embedder.evaluation on hand-made cases: perfect, random and hand-computed rankings, RRF, storage, audit."""

from __future__ import annotations

import numpy as np
import pytest

from embedder import evaluation as ev
from embedder.vectors import SparseBatch, normalize


def _ids(n: int) -> list[str]:
    return [f"item-{i:03d}" for i in range(n)]


def _sparse(rows: list[dict[int, float]]) -> SparseBatch:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.array([i for r in rows for i in sorted(r)], dtype=np.int32)
    values = np.array([r[i] for r in rows for i in sorted(r)], dtype=np.float32)
    return SparseBatch(offsets, indices, values)


# ---------------------------------------------------------------- metrics


def test_perfect_embeddings_score_one() -> None:
    rng = np.random.default_rng(0)
    docs = normalize(rng.normal(size=(50, 16)).astype(np.float32))
    ids = _ids(50)
    m = ev.retrieval_metrics(ev.dense_scores(docs, docs), ids, ids)
    assert m == {"recall@1": 1.0, "recall@10": 1.0, "mrr@10": 1.0, "queries": 50}
    # Documents in another order: relevance follows the ids, not the positions.
    perm = rng.permutation(50)
    m = ev.retrieval_metrics(ev.dense_scores(docs, docs[perm]), ids, [ids[i] for i in perm])
    assert (m["recall@1"], m["recall@10"], m["mrr@10"]) == (1.0, 1.0, 1.0)


def test_random_embeddings_are_near_chance() -> None:
    n = 200
    rng = np.random.default_rng(1234)
    q = normalize(rng.normal(size=(n, 64)).astype(np.float32))
    d = normalize(rng.normal(size=(n, 64)).astype(np.float32))
    ranks = ev.relevant_ranks(ev.dense_scores(q, d), _ids(n), _ids(n))
    assert ranks.min() >= 1 and ranks.max() <= n
    m = ev.metrics_from_ranks(ranks)
    # Chance: recall@1 = 1/200, recall@10 = 10/200 = 0.05, MRR@10 = H(10)/200 = 0.0146.
    assert abs(m["recall@10"] - 10 / n) < 0.035
    assert m["recall@1"] < 0.03
    assert abs(m["mrr@10"] - sum(1 / r for r in range(1, 11)) / n) < 0.02
    # The mean rank of a random ranking is (n + 1) / 2.
    assert abs(ranks.mean() - (n + 1) / 2) < 15


def test_hand_computed_ranks_and_mrr() -> None:
    # Query a: its document is 1st. Query b: 2nd. Query c: 4th. Query d: 12th of 12 (past the MRR cut-off).
    docs = ["a", "b", "c", "d"] + [f"x{i}" for i in range(8)]
    scores = np.zeros((4, 12))
    scores[0] = [0.9, 0.1, 0.1, 0.1] + [0.0] * 8
    scores[1] = [0.9, 0.8, 0.1, 0.1] + [0.0] * 8
    scores[2] = [0.9, 0.8, 0.5, 0.1] + [0.7] + [0.0] * 7
    scores[3] = [0.9, 0.8, 0.7, -1.0] + [0.5] * 8
    ranks = ev.relevant_ranks(scores, ["a", "b", "c", "d"], docs)
    np.testing.assert_array_equal(ranks, [1, 2, 4, 12])
    m = ev.metrics_from_ranks(ranks)
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 0) / 4)


def test_ties_count_against_the_query_and_unretrieved_is_a_miss() -> None:
    # Three documents tie with the relevant one: it is ranked after them (pessimistic).
    scores = np.array([[0.5, 0.5, 0.5, 0.5, 0.1]])
    assert ev.relevant_ranks(scores, ["c"], ["a", "b", "c", "d", "e"]).tolist() == [4]
    # All-zero sparse scores carry no information: a miss even with fewer than 10 documents.
    zero = ev.absent_when_zero(np.zeros((1, 5)))
    rank = ev.relevant_ranks(zero, ["c"], ["a", "b", "c", "d", "e"])
    assert rank[0] == ev.NOT_RETRIEVED
    assert ev.metrics_from_ranks(rank)["recall@10"] == 0.0


def test_several_relevant_documents_and_queries_without_any() -> None:
    # Two chunks of item a: the better one counts. Query z has no relevant document: left out.
    scores = np.array([[0.2, 0.9, 0.5], [0.3, 0.2, 0.1]])
    ranks = ev.relevant_ranks(scores, ["a", "z"], ["a", "a", "b"])
    assert ranks.tolist() == [1, 0]
    assert ev.metrics_from_ranks(ranks)["queries"] == 1


def test_metrics_of_nothing_are_nan() -> None:
    m = ev.metrics_from_ranks([0, 0])
    assert m["queries"] == 0 and np.isnan(m["recall@1"])
    assert ev.mean_metrics([])["queries"] == 0


def test_mean_metrics_is_unweighted_and_sums_queries() -> None:
    a = {"recall@1": 1.0, "recall@10": 1.0, "mrr@10": 1.0, "queries": 10}
    b = {"recall@1": 0.0, "recall@10": 0.5, "mrr@10": 0.25, "queries": 30}
    assert ev.mean_metrics([a, b]) == {"recall@1": 0.5, "recall@10": 0.75, "mrr@10": 0.625, "queries": 40}


def test_ranks_from_hits() -> None:
    ranks = ev.ranks_from_hits([["b", "a"], ["x", "y"], ["c"]], ["a", "b", "c"])
    assert ranks.tolist() == [2, ev.NOT_RETRIEVED, 1]


def test_max_by_group_takes_the_best_chunk() -> None:
    chunk_scores = np.array([[0.1, 0.7, 0.3, 0.2], [0.9, 0.0, 0.4, 0.5]])
    docs = ev.max_by_group(chunk_scores, [0, 0, 1, 1], 3)
    np.testing.assert_allclose(docs[:, :2], [[0.7, 0.3], [0.9, 0.5]])
    assert np.isneginf(docs[:, 2]).all()  # a document without chunks is never retrieved


# ---------------------------------------------------------------- sparse


def test_sparse_scores_are_inner_products() -> None:
    q = _sparse([{1: 0.5, 7: 2.0}, {3: 1.0}, {}])
    d = _sparse([{1: 1.0, 3: 4.0}, {7: 0.25, 9: 1.0}, {100: 3.0}])
    got = ev.sparse_scores(q, d)
    want = np.array([[0.5, 0.5, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(got, want)
    ids = ["a", "b", "c"]
    ranks = ev.relevant_ranks(ev.absent_when_zero(got), ids, ids)
    # Query a ties with b at 0.5 (pessimistic: 2nd); query b finds a, not b; query c matches nothing.
    assert ranks.tolist() == [2, ev.NOT_RETRIEVED, ev.NOT_RETRIEVED]


# ---------------------------------------------------------------- RRF


def test_rrf_scores_hand_computed() -> None:
    dense = np.array([[0.9, 0.5, 0.1]])  # ranks a=1, b=2, c=3
    sparse = np.array([[0.0, 2.0, 1.0]])  # ranks b=1, c=2, a absent
    fused = ev.rrf_scores([dense, ev.absent_when_zero(sparse)], k=60)
    np.testing.assert_allclose(fused[0], [1 / 61, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])
    # b (2nd and 1st) beats c (3rd and 2nd), which beats a (1st, absent).
    assert np.argsort(-fused[0]).tolist() == [1, 2, 0]
    # depth=1: only each list's best document counts.
    np.testing.assert_allclose(ev.rrf_scores([dense, sparse], depth=1)[0], [1 / 61, 1 / 61, 0.0])


def test_rrf_scores_agree_with_the_milvus_fallback_fusion() -> None:
    pytest.importorskip("pymilvus")
    from cluster.milvus.search import RRF_K, rrf_fuse

    assert RRF_K == ev.RRF_K
    rng = np.random.default_rng(7)
    names = [f"d{i}" for i in range(12)]
    a, b = rng.normal(size=12), rng.normal(size=12)
    b[[3, 5, 8]] = -np.inf  # absent from the second list
    fused = ev.rrf_scores([a[None, :], b[None, :]])[0]
    lists = [[names[i] for i in np.argsort(-s, kind="stable") if np.isfinite(s[i])] for s in (a, b)]
    reference = dict(rrf_fuse(lists))
    for i, name in enumerate(names):
        assert fused[i] == pytest.approx(reference[name])
    # The same order, up to ties (ranks 1 and 3 score as ranks 3 and 1).
    ours = [fused[names.index(k)] for k, _ in rrf_fuse(lists)]
    assert all(x >= y - 1e-15 for x, y in zip(ours, ours[1:]))


def test_rrf_needs_matching_shapes() -> None:
    with pytest.raises(ValueError):
        ev.rrf_scores([np.zeros((1, 2)), np.zeros((1, 3))])
    with pytest.raises(ValueError):
        ev.rrf_scores([])


# ---------------------------------------------------------------- audit


def test_storage_bytes_per_million() -> None:
    assert ev.storage_bytes_per_million(384) == 1_536_000_000
    assert ev.storage_bytes_per_million(1024) == 4_096_000_000
    assert ev.storage_bytes_per_million(256, dtype_bytes=2) == 512_000_000
    with pytest.raises(ValueError):
        ev.storage_bytes_per_million(0)


def test_audit_dims() -> None:
    assert ev.audit_dims(384) == [384, 256, 128, 64]
    assert ev.audit_dims(1024) == [1024, 768, 512, 256, 128, 64]
    assert ev.audit_dims(384, ["full", 128], configured=200) == [384, 200, 128]
    assert ev.audit_dims(32, [768, 64]) == []


def test_matryoshka_truncates_and_renormalizes() -> None:
    x = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(ev.matryoshka(x, 2), [[0.6, 0.8], [1.0, 0.0]], atol=1e-7)
    with pytest.raises(ValueError):
        ev.matryoshka(x, 4)


def test_recall_drop_of_a_constructed_cut() -> None:
    # The items differ only in the last components: cutting them away leaves chance-level retrieval.
    n, rng = 40, np.random.default_rng(3)
    shared = np.ones((n, 8), dtype=np.float32)
    x = normalize(np.hstack([shared, rng.normal(size=(n, 8)).astype(np.float32)]))
    ids = _ids(n)
    full = ev.retrieval_metrics(ev.dense_scores(x, x), ids, ids)
    cut = ev.matryoshka(x, 8)
    short = ev.retrieval_metrics(ev.dense_scores(cut, cut), ids, ids)
    assert full["recall@10"] == 1.0
    assert ev.recall_drop(full, short) > 0.5
