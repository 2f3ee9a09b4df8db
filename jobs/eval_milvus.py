"""``jobs.evaluate --through-milvus``: the dense search of the evaluation repeated through real Milvus
(temporary milvus-lite collections written with ``MilvusWriter``, searched with ``cluster.milvus.search``)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder import evaluation as ev
from jobs.eval_pairs import averages

if TYPE_CHECKING:
    from jobs.eval_pairs import Pairs
    from jobs.evaluate import Vectors

_MILVUS_COLLECTION = "evaluation"


def evaluate_through_milvus(pairs: Pairs, vectors: Vectors, dim: int, *, top_k: int = 10,
                            layout: str = "per_language", workdir: str | Path | None = None) -> dict[str, Any]:
    """Dense retrieval through temporary milvus-lite collections (HNSW/IP, as the job writes them).

    The documents (chunks cut to ``dim``) are upserted with ``MilvusWriter``, with their ``lang``
    and ``item_id`` as metadata; each query is searched with ``cluster.milvus.search.search`` in
    every document language, and the ranks come from the top ``top_k`` documents of the hits.

    Args:
        layout: ``per_language``: one collection per document language, searched without a
            filter (what ``jobs.search`` does on a collection); ``filter``: one collection holding
            every language, searched with ``filter='lang == "xx"'`` (filtered HNSW search).
    """
    import pyarrow as pa

    from cluster import contract as C
    from cluster.milvus.connect import connect
    from cluster.milvus.schema import CollectionSpec, ensure_collection
    from cluster.milvus.search import search
    from cluster.milvus.writer import MilvusWriter
    from cluster.settings import MilvusConfig

    if layout not in ("per_language", "filter"):
        raise ValueError(f"layout {layout!r}: choose 'per_language' or 'filter'")
    started = time.perf_counter()
    failed = vectors.failed
    ok = np.array([i not in failed for i in range(len(pairs))], dtype=bool)
    keep_chunks = ok[vectors.chunk_doc]
    chunk_doc = vectors.chunk_doc[keep_chunks]
    docs = ev.matryoshka(vectors.docs[keep_chunks], dim)
    queries = ev.matryoshka(vectors.queries, dim)
    chunk_index = np.zeros(len(chunk_doc), dtype=np.int32)
    for i in range(1, len(chunk_doc)):
        chunk_index[i] = chunk_index[i - 1] + 1 if chunk_doc[i] == chunk_doc[i - 1] else 0
    per_doc = int(np.bincount(chunk_doc).max(initial=1)) if len(chunk_doc) else 1
    limit = min(top_k * per_doc, 16384)  # enough chunks for top_k distinct documents
    chunk_lang = pairs.langs[chunk_doc]
    if layout == "per_language":
        collections = {lang: (f"{_MILVUS_COLLECTION}_{n}", "") for n, lang in enumerate(pairs.languages)}
    else:
        collections = {lang: (_MILVUS_COLLECTION, f'lang == "{lang}"') for lang in pairs.languages}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="evaluate-milvus-", dir=workdir) as tmp:
        base = MilvusConfig(uri=str(Path(tmp) / "eval.db"), collection=_MILVUS_COLLECTION, store_text=False)
        client = connect(base)
        try:
            for name in dict.fromkeys(c for c, _ in collections.values()):
                cfg = dataclasses.replace(base, collection=name)
                spec = CollectionSpec.from_config(cfg, dense_dim=dim, has_sparse=False,
                                                  metadata={"lang": pa.string(), "item_id": pa.string()})
                ensure_collection(client, spec, lite=True)
                mine = np.array([collections[str(lang)][0] == name for lang in chunk_lang], dtype=bool)
                sel = chunk_doc[mine]
                doc_ids = [f"{pairs.item_ids[d]}|{pairs.langs[d]}" for d in sel]
                writer = MilvusWriter(client, spec, cfg)
                writer.write(pa.table({
                    C.PK: [C.chunk_pk(d, int(c)) for d, c in zip(doc_ids, chunk_index[mine])],
                    C.DOC_ID: doc_ids,
                    C.CHUNK_INDEX: pa.array(chunk_index[mine], pa.int32()),
                    C.DENSE: pa.FixedSizeListArray.from_arrays(pa.array(docs[mine].reshape(-1), pa.float32()), dim),
                    "lang": [str(pairs.langs[d]) for d in sel],
                    "item_id": [str(pairs.item_ids[d]) for d in sel],
                }))
                writer.flush()
            loaded = time.perf_counter()
            for q_lang in pairs.languages:
                q_rows = np.flatnonzero((pairs.langs == q_lang) & ok)
                for d_lang in pairs.languages:
                    name, expr = collections[d_lang]
                    hits_per_query = []
                    for i in q_rows:
                        hits = search(client, name, dense=queries[i], mode="dense", top_k=limit,
                                      output_fields=[C.DOC_ID, "item_id"], filter=expr)
                        best = list(dict.fromkeys((h[C.DOC_ID], h["metadata"]["item_id"]) for h in hits))[:top_k]
                        hits_per_query.append([item for _, item in best])
                    ranks = ev.ranks_from_hits(hits_per_query, pairs.item_ids[q_rows].tolist())
                    has_doc = set(pairs.item_ids[(pairs.langs == d_lang) & ok].tolist())
                    ranks[[x not in has_doc for x in pairs.item_ids[q_rows].tolist()]] = 0  # nothing relevant
                    rows.append({"query_lang": q_lang, "doc_lang": d_lang, "dense": ev.metrics_from_ranks(ranks)})
        finally:
            client.close()
    where = "one collection per language" if layout == "per_language" else "one collection, lang filter"
    return {"dim": dim, "top_k": top_k, "layout": layout, "index": f"HNSW/IP, milvus-lite, {where}",
            "pairs": rows, "averages": averages(rows), "rows_loaded": int(len(chunk_doc)),
            "searches": len(pairs.languages) * int(ok.sum()),
            "load_s": round(loaded - started, 3), "search_s": round(time.perf_counter() - loaded, 3)}


__all__ = ["evaluate_through_milvus"]
