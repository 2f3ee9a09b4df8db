"""Dense, sparse and hybrid search on milvus-lite, and the client-side RRF fallback."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pymilvus import MilvusException

from cluster.milvus.schema import CollectionSpec, ensure_collection
from cluster.milvus.search import rrf_fuse, search
from cluster.milvus.writer import MilvusWriter
from cluster.settings import MilvusConfig


@pytest.fixture()
def filled(lite_client, lite_cfg: MilvusConfig, make_batch) -> pa.Table:
    spec = CollectionSpec.from_config(lite_cfg, dense_dim=16, has_sparse=True,
                                      metadata={"lang": pa.string(), "year": pa.int64()})
    ensure_collection(lite_client, spec)
    batch = make_batch(60)
    writer = MilvusWriter(lite_client, spec, lite_cfg)
    writer.write(batch)
    writer.flush()
    return batch


def test_dense_finds_the_exact_vector(lite_client, filled: pa.Table) -> None:
    query = np.asarray(filled.column("dense")[17].as_py(), dtype=np.float32)
    hits = search(lite_client, "docs", dense=query, mode="dense", top_k=5)
    assert len(hits) == 5
    top = hits[0]
    assert top["pk"] == "d17#2" and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert (top["doc_id"], top["chunk_index"], top["text"]) == ("d17", 2, "chunk 17 text")
    assert top["metadata"] == {"lang": "de", "year": 2017}
    assert hits[0]["score"] >= hits[1]["score"] >= hits[4]["score"]


def test_sparse_finds_the_exact_weights(lite_client, filled: pa.Table) -> None:
    indices = filled.column("sparse_indices")[23].as_py()
    values = filled.column("sparse_values")[23].as_py()
    hits = search(lite_client, "docs", sparse=(np.array(indices), np.array(values)), mode="sparse", top_k=3,
                  output_fields=["doc_id"])
    assert hits[0]["pk"] == "d23#2"
    assert hits[0]["score"] == pytest.approx(float(np.dot(values, values)), rel=1e-5)
    assert hits[0]["metadata"] == {} and "text" not in hits[0]


def test_hybrid_fuses_dense_and_sparse_with_rrf(lite_client, filled: pa.Table) -> None:
    dense = np.asarray(filled.column("dense")[5].as_py())
    sparse = (filled.column("sparse_indices")[5].as_py(), filled.column("sparse_values")[5].as_py())
    hits = search(lite_client, "docs", dense=dense, sparse=sparse, mode="hybrid", top_k=5)
    assert hits[0]["pk"] == "d5#2"
    assert hits[0]["score"] == pytest.approx(2 / 61, rel=1e-4)  # rank 1 in both lists
    assert hits[0]["text"] == "chunk 5 text" and hits[0]["metadata"]["year"] == 2005


def test_hybrid_falls_back_to_client_side_rrf(lite_client, filled: pa.Table) -> None:
    """When hybrid_search is unimplemented, the fused result is computed here, with the same ranking."""

    class NoHybrid:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def hybrid_search(self, *args, **kwargs):
            raise MilvusException(code=1, message="StatusCode.UNIMPLEMENTED: Method not implemented!")

    dense = np.asarray(filled.column("dense")[9].as_py())
    sparse = (filled.column("sparse_indices")[9].as_py(), filled.column("sparse_values")[9].as_py())
    server = search(lite_client, "docs", dense=dense, sparse=sparse, mode="hybrid", top_k=10, candidates=60)
    local = search(NoHybrid(lite_client), "docs", dense=dense, sparse=sparse, mode="hybrid", top_k=10, candidates=60)
    assert local[0]["pk"] == server[0]["pk"] == "d9#0"
    assert [h["score"] for h in local] == pytest.approx([h["score"] for h in server], rel=1e-4)


def test_filter_and_mode_errors(lite_client, filled: pa.Table) -> None:
    query = np.asarray(filled.column("dense")[4].as_py())
    hits = search(lite_client, "docs", dense=query, top_k=10, filter='lang == "de"')
    assert hits and all(h["metadata"]["lang"] == "de" for h in hits)
    with pytest.raises(ValueError, match="needs a dense query vector"):
        search(lite_client, "docs", mode="hybrid", sparse=([1], [1.0]))
    with pytest.raises(ValueError, match="needs a sparse query vector"):
        search(lite_client, "docs", mode="sparse", dense=query)
    with pytest.raises(ValueError, match="mode 'both'"):
        search(lite_client, "docs", mode="both", dense=query)  # type: ignore[arg-type]


def test_sparse_modes_need_a_sparse_field(lite_client, lite_cfg: MilvusConfig) -> None:
    ensure_collection(lite_client, CollectionSpec(name="plain", dense_dim=4, has_sparse=False))
    with pytest.raises(ValueError, match="no sparse field: use mode 'dense'"):
        search(lite_client, "plain", sparse=([1], [1.0]), mode="sparse")


def test_rrf_fuse() -> None:
    fused = rrf_fuse([["a", "b", "c"], ["b", "d"]], k=60)
    assert [key for key, _ in fused] == ["b", "a", "d", "c"]
    assert dict(fused)["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert dict(fused)["c"] == pytest.approx(1 / 63)
    assert rrf_fuse([]) == []
