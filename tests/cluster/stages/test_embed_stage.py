"""EmbedStage on real tokenized tables: the batch contract, pass-through rows, fp32_reruns; torch threads under Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cluster import contract as c
from cluster.stages.embed import EmbedStage
from cluster.stages.tokenize import tokenize_docs
from embedder.encoder import Encoder
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig
from tests.embedder.test_encoder_reference import TINY_TEXTS

CHUNKING = ChunkingConfig(overlap=4)


def tokenized(model: ModelConfig, texts: list[str]) -> pa.Table:
    """Documents as the read stage emits them (one rejected, one shard end marker), tokenized."""
    n = len(texts)
    errors = [None] * n
    errors[3] = "rejected by the reader"
    end = [None] * n
    end[-1] = n - 1  # the last row is the shard's end marker
    docs = pa.table({c.DOC_ID: [f"d{i}" for i in range(n)], c.TEXT: texts, c.SHARD: ["s"] * n,
                     c.ROW: pa.array(range(n), pa.int64()), c.ERROR: pa.array(errors, pa.string()),
                     "lang": ["xx"] * n, c.SHARD_END: pa.array(end, pa.int64())})
    return tokenize_docs(docs, model=model, chunking=CHUNKING)


@pytest.fixture(scope="module")
def table_and_model(tiny_m3_dir: Path) -> tuple[pa.Table, ModelConfig]:
    model = ModelConfig(name=str(tiny_m3_dir), precision="fp32", device="cpu")
    long = " ".join(TINY_TEXTS)  # over the 64-token limit: several chunks
    return tokenized(model, [*TINY_TEXTS, long, "end marker"]), model


def test_contract_and_vectors(table_and_model: tuple[pa.Table, ModelConfig]) -> None:
    table, model = table_and_model
    # Ray hands over blocks whose columns may be split in several chunks and sliced.
    chunked = pa.concat_tables([table.slice(0, 5), table.slice(5)])
    stage = EmbedStage(model, BatchConfig(max_tokens=256, max_rows=4), CHUNKING)
    out = stage(chunked)

    assert out.num_rows == table.num_rows
    assert c.INPUT_IDS not in out.column_names
    for name in table.column_names:  # every other column passes through, row order kept
        if name != c.INPUT_IDS:
            assert out.column(name).to_pylist() == table.column(name).to_pylist(), name
    payload = np.array([e is None and s is None for e, s in zip(table.column(c.ERROR).to_pylist(),
                                                                table.column(c.SHARD_END).to_pylist())])
    assert payload.sum() > len(TINY_TEXTS) and (~payload).sum() == 2
    assert out.schema.field(c.DENSE).type == pa.list_(pa.float32(), 32)
    assert out.schema.field(c.PADDED_LEN).type == pa.int32()
    assert out.schema.field(c.FP32_RERUNS).type == pa.int32()
    assert out.column(c.FP32_RERUNS).to_pylist() == [0] * out.num_rows

    dense = out.column(c.DENSE).to_pylist()
    indices, values = out.column(c.SPARSE_INDICES).to_pylist(), out.column(c.SPARSE_VALUES).to_pylist()
    assert [d is None for d in dense] == (~payload).tolist()
    assert [i is None for i in indices] == (~payload).tolist()
    # The same chunks through an Encoder, padded, in their own order: same vectors.
    ids = [np.asarray(x, dtype=np.int32) for x in np.asarray(table.column(c.INPUT_IDS).to_pylist(),
                                                               dtype=object)[payload]]
    ref = Encoder(model.__class__(**{**model.__dict__, "attention": "padded"}), BatchConfig(max_tokens=64, max_rows=1),
                  CHUNKING).embed_ids(ids)
    got = np.array([d for d in dense if d is not None], dtype=np.float32)
    assert np.abs(got - ref.dense).max() <= 1e-5
    for k, i in enumerate(np.flatnonzero(payload)):
        want = ref.sparse.row(k)
        assert indices[i] == sorted(want)
        np.testing.assert_allclose(values[i], [want[t] for t in sorted(want)], atol=1e-5)
    # Packed on CPU (auto): padded_len is each row's own length, so padding efficiency reads 1.0.
    assert stage.encoder.unpadded
    padded = np.asarray(out.column(c.PADDED_LEN))
    np.testing.assert_array_equal(padded[payload], np.asarray(table.column(c.N_TOKENS))[payload])
    assert (padded[~payload] == 0).all()


def test_only_markers_and_rejects(table_and_model: tuple[pa.Table, ModelConfig]) -> None:
    table, model = table_and_model
    rest = table.filter(pa.array([e is not None or s is not None for e, s in zip(
        table.column(c.ERROR).to_pylist(), table.column(c.SHARD_END).to_pylist())]))
    out = EmbedStage(model, BatchConfig(max_tokens=256), CHUNKING)(rest)
    assert out.num_rows == 2 and out.column(c.DENSE).null_count == 2
    assert out.column(c.FP32_RERUNS).to_pylist() == [0, 0]


def test_fp32_reruns_on_the_first_row(tiny_m3_dir: Path, tmp_path: Path) -> None:
    """fp16 overflows in the copy from test_precision_fallback: every batch is re-run, counted on row 0."""
    from tests.embedder.test_precision_fallback import scaled_copy

    broken = scaled_copy(tiny_m3_dir, tmp_path / "ffn", ffn=True, sparse_head=False)
    model = ModelConfig(name=str(broken), precision="fp16", device="cpu")
    table = tokenized(model, [*TINY_TEXTS[:8], "end"])
    stage = EmbedStage(model, BatchConfig(max_tokens=128, max_rows=2), CHUNKING)
    out = stage(table)
    reruns = out.column(c.FP32_RERUNS).to_pylist()
    assert reruns[0] == stage.encoder.stats.batches >= 3 and reruns[1:] == [0] * (out.num_rows - 1)
    assert out.column(c.ERROR).null_count == out.num_rows - 1  # only the reader's reject: every chunk got a vector
    assert stage.encoder.runner._fp32 is not None


def test_cpu_actor_uses_every_core_not_omp_num_threads(tiny_m3_dir: Path, ray_local: None) -> None:
    """Ray starts a 1-CPU actor with OMP_NUM_THREADS=1; the embed actor on CPU takes the node's cores."""
    import os

    import ray

    from embedder.threads import usable_cores

    class ThreadsOfEmbedStage(EmbedStage):
        def threads(self) -> tuple[int, str | None]:
            import torch

            return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    model = ModelConfig(name=str(tiny_m3_dir), precision="fp32")
    actor = ray.remote(num_cpus=1)(ThreadsOfEmbedStage).remote(model, BatchConfig(), CHUNKING)
    threads, omp = ray.get(actor.threads.remote(), timeout=120)
    ray.kill(actor)
    assert omp == "1" and threads == usable_cores() == 2


def test_cpu_threads_setting() -> None:
    import torch

    from embedder.threads import use_cpu_threads

    before = torch.get_num_threads()
    try:
        assert use_cpu_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
