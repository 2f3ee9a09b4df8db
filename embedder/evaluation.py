"""Retrieval-quality metrics on numpy arrays: recall@k and MRR@10 for dense, sparse and hybrid search.

Pure functions, no I/O, no model: ``jobs/evaluate.py`` embeds an aligned multilingual set (the
same items in several languages) and hands the vectors here.

The set-up: queries and documents each carry an ``item_id``; a document is *relevant* to a
query when it has the query's ``item_id`` (the same item, in the document language). Each query
is scored against every document (inner product for dense and for sparse vectors; reciprocal
rank fusion of the two rankings for hybrid), and the *rank* of a query is the position of its
best relevant document:

    rank = 1 + number of non-relevant documents scoring >= the best relevant document

Ties count against the query (pessimistic): a relevant document that shares its score with
others is ranked after all of them, so a sparse query with no token in common with any document
(every score 0) gets the worst rank, never a lucky first place. Then, over the queries that
have a relevant document:

* ``recall@k`` = fraction of queries with rank <= k (one relevant document per query, so this is
  also success@k / hit rate);
* ``mrr@10`` = mean of 1/rank, counting 0 when rank > 10 (MRR@10, as in MS MARCO: the same figure
  a top-10 search through Milvus can measure).

Example:
    >>> q = np.eye(3, dtype=np.float32); d = np.eye(3, dtype=np.float32)
    >>> retrieval_metrics(dense_scores(q, d), ["a", "b", "c"], ["a", "b", "c"])
    {'recall@1': 1.0, 'recall@10': 1.0, 'mrr@10': 1.0, 'queries': 3}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from embedder.vectors import SparseBatch, truncate

#: The metrics every function here reports, in display order.
METRICS: tuple[str, ...] = ("recall@1", "recall@10", "mrr@10")
#: The RRF constant (Milvus' RRFRanker default, and ``cluster.milvus.search.RRF_K``).
RRF_K = 60
#: Candidate dimensions of the Matryoshka audit (``full`` = the model's own dimension).
AUDIT_DIMS: tuple[int | str, ...] = ("full", 768, 512, 256, 128, 64)
MRR_CUTOFF = 10
#: The rank of a query whose relevant document was not retrieved at all (past any cut-off).
NOT_RETRIEVED = 1 << 40


# ------------------------------------------------------------------------------------------ scores


def dense_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Inner products ``[n_queries, n_docs]`` (cosine similarity for L2-normalized rows)."""
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(docs, dtype=np.float32)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"dense_scores: need 2-D arrays of the same width, got {q.shape} and {d.shape}")
    return q @ d.T


def _csr(batch: SparseBatch, n_cols: int):  # noqa: ANN202 - scipy.sparse.csr_matrix
    import scipy.sparse as sp

    n = len(batch.offsets) - 1
    return sp.csr_matrix((batch.values.astype(np.float32, copy=False), batch.indices.astype(np.int64, copy=False),
                          batch.offsets.astype(np.int64, copy=False)), shape=(n, n_cols))


def sparse_scores(queries: SparseBatch, docs: SparseBatch) -> np.ndarray:
    """Inner products of sparse rows (BGE-M3 lexical matching), as a dense ``[n_queries, n_docs]`` array."""
    width = 1 + max(int(queries.indices.max(initial=-1)), int(docs.indices.max(initial=-1)), 0)
    product = _csr(queries, width) @ _csr(docs, width).T
    return np.asarray(product.toarray(), dtype=np.float32)


def _ordinal_ranks(scores: np.ndarray) -> np.ndarray:
    """Per row, the 1-based position of each column when sorted by score, best first (ties: lower column first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, scores.shape[1] + 1)[None, :]
    return ranks


def rrf_scores(score_matrices: Sequence[np.ndarray], k: int = RRF_K, depth: int | None = None) -> np.ndarray:
    """Reciprocal rank fusion of several rankings of the same documents, for every query at once.

    Each matrix ranks the documents of each query (row) by score, best first; a document at rank
    r adds ``1 / (k + r)`` to its fused score. This is the formula of Milvus' ``RRFRanker`` and of
    :func:`cluster.milvus.search.rrf_fuse`, vectorized.

    Args:
        score_matrices: ``[n_queries, n_docs]`` arrays; an entry of ``-inf`` means "not in this
            list" (e.g. a document without any token of a sparse query) and adds nothing.
        k: The RRF constant.
        depth: Only the first ``depth`` documents of each list count (what a search that fuses
            the top ``depth`` hits of each retriever sees); None = every document.

    Returns:
        The fused scores, ``[n_queries, n_docs]``, float64 (larger is better; 0 = in no list).
    """
    if not score_matrices:
        raise ValueError("rrf_scores needs at least one score matrix")
    shape = np.shape(score_matrices[0])
    fused = np.zeros(shape, dtype=np.float64)
    for scores in score_matrices:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != shape:
            raise ValueError(f"rrf_scores: score matrices differ in shape: {shape} vs {scores.shape}")
        ranks = _ordinal_ranks(scores)
        keep = scores > -np.inf  # -inf (and NaN): not in this list
        if depth is not None:
            keep &= ranks <= depth
        fused += np.where(keep, 1.0 / (k + ranks), 0.0)
    return fused


def absent_when_zero(scores: np.ndarray) -> np.ndarray:
    """Sparse scores with the documents a sparse search would not return (score <= 0) set to ``-inf``."""
    return np.where(scores > 0, scores, -np.inf)


def max_by_group(scores: np.ndarray, groups: np.ndarray | Sequence[int], n_groups: int) -> np.ndarray:
    """Column-wise max per group: chunk scores ``[n_queries, n_chunks]`` -> document scores ``[n_queries, n_groups]``.

    A document split into several chunks scores as its best chunk; a group without any column gets ``-inf``.
    """
    groups = np.asarray(groups, dtype=np.int64)
    out = np.full((scores.shape[0], n_groups), -np.inf, dtype=np.float64)
    if scores.shape[1]:
        np.maximum.at(out.T, groups, np.asarray(scores, dtype=np.float64).T)
    return out


# ------------------------------------------------------------------------------------------ ranks


def relevant_ranks(scores: np.ndarray, query_ids: Sequence[str] | np.ndarray,
                   doc_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """The rank of each query's best relevant document (pessimistic on ties, see the module doc).

    Args:
        scores: ``[n_queries, n_docs]``; larger is better; ``-inf`` = not retrieved.
        query_ids: The item id of each query.
        doc_ids: The item id of each document.

    Returns:
        int64 ranks, 1-based; 0 for a query with no relevant document (left out of the metrics).
        A relevant document that was not retrieved (``-inf``) gets :data:`NOT_RETRIEVED`, past any cut-off.
    """
    scores = np.asarray(scores, dtype=np.float64)
    q_ids, d_ids = np.asarray(query_ids), np.asarray(doc_ids)
    if scores.shape != (len(q_ids), len(d_ids)):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(q_ids)}, {len(d_ids)})")
    relevant = q_ids[:, None] == d_ids[None, :]
    has_relevant = relevant.any(axis=1)
    best = np.where(relevant, scores, -np.inf).max(axis=1, initial=-np.inf)
    beaten = ((scores >= best[:, None]) & ~relevant).sum(axis=1)
    ranks = 1 + beaten
    ranks[np.isneginf(best)] = NOT_RETRIEVED
    return np.where(has_relevant, ranks, 0).astype(np.int64)


def ranks_from_hits(hits: Sequence[Sequence[str]], query_ids: Sequence[str],
                    miss_rank: int | None = None) -> np.ndarray:
    """Ranks from ranked result lists (e.g. Milvus hits, already mapped to item ids): 1-based position of the
    first hit with the query's item id; ``miss_rank`` (default :data:`NOT_RETRIEVED`) when absent."""
    if miss_rank is None:
        miss_rank = NOT_RETRIEVED
    out = np.full(len(query_ids), miss_rank, dtype=np.int64)
    for i, (ranked, want) in enumerate(zip(hits, query_ids)):
        for r, item in enumerate(ranked, start=1):
            if item == want:
                out[i] = r
                break
    return out


def metrics_from_ranks(ranks: np.ndarray | Sequence[int]) -> dict[str, float | int]:
    """``recall@1``, ``recall@10``, ``mrr@10`` over the ranks > 0, plus ``queries`` (how many counted)."""
    r = np.asarray(ranks, dtype=np.int64)
    r = r[r > 0]
    if r.size == 0:
        return {**{m: float("nan") for m in METRICS}, "queries": 0}
    return {"recall@1": float(np.mean(r <= 1)), "recall@10": float(np.mean(r <= 10)),
            "mrr@10": float(np.mean(np.where(r <= MRR_CUTOFF, 1.0 / r, 0.0))), "queries": int(r.size)}


def retrieval_metrics(scores: np.ndarray, query_ids: Sequence[str] | np.ndarray,
                      doc_ids: Sequence[str] | np.ndarray) -> dict[str, float | int]:
    """recall@1, recall@10 and MRR@10 of one query set against one document set."""
    return metrics_from_ranks(relevant_ranks(scores, query_ids, doc_ids))


def mean_metrics(rows: Iterable[Mapping[str, float | int]]) -> dict[str, float | int]:
    """Unweighted mean of several metric dicts (e.g. over language pairs); ``queries`` is summed."""
    rows = [r for r in rows if r.get("queries", 1)]
    if not rows:
        return {**{m: float("nan") for m in METRICS}, "queries": 0}
    out: dict[str, float | int] = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
    out["queries"] = int(sum(int(r.get("queries", 0)) for r in rows))
    return out


# ------------------------------------------------------------------------------------------ audit


def storage_bytes_per_million(dim: int, dtype_bytes: int = 4) -> int:
    """Raw bytes of one million ``dim``-dimensional vectors (float32 = 4 bytes), index overhead excluded."""
    if dim < 1 or dtype_bytes < 1:
        raise ValueError(f"dim and dtype_bytes must be positive, got {dim} and {dtype_bytes}")
    return int(dim) * int(dtype_bytes) * 1_000_000


def matryoshka(x: np.ndarray, dim: int) -> np.ndarray:
    """The vectors as they would be stored with ``model.dense_dim = dim``: first ``dim`` components, re-normalized."""
    return truncate(np.asarray(x, dtype=np.float32), dim, renormalize=True)


def audit_dims(model_dim: int, candidates: Iterable[int | str] = AUDIT_DIMS,
               configured: int | None = None) -> list[int]:
    """The dimensions to audit: the candidates (``full`` = ``model_dim``) that are <= the model's dimension,
    plus the configured one, largest first, without duplicates."""
    dims = {model_dim if str(c).lower() == "full" else int(c) for c in candidates}
    if configured:
        dims.add(int(configured))
    bad = [d for d in dims if d < 1]
    if bad:
        raise ValueError(f"dimensions must be positive, got {bad}")
    return sorted((d for d in dims if d <= model_dim), reverse=True)


def recall_drop(full: Mapping[str, float], cut: Mapping[str, float], metric: str = "recall@10") -> float:
    """How much ``metric`` falls from the full dimension to a cut one (positive = worse)."""
    return float(full[metric]) - float(cut[metric])
