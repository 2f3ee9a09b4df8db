"""The encoder's batch paths on CPU: packed (unpadded) vs padded, the one-ahead schedule, OOM back-off,
the non-finite guard and padding, and which attention is chosen where.

References: ``SentenceTransformer.encode`` in fp32 and each text embedded alone (no batch effects).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder.attention import VARLEN, choose_attention, probe_varlen
from embedder.encoder import Embeddings, Encoder
from embedder.forward import ModelRunner
from embedder.schedule import DEPTH, Budget, run_batches
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig
from embedder.token_rows import TokenRows
from tests.embedder.test_encoder_reference import E5_TEXTS, TINY_TEXTS

TOL = 1e-5


def encoder(path: Path, attention: str, precision: str = "fp32", max_tokens: int = 160, max_rows: int = 4,
            **kw: object) -> Encoder:
    cfg = ModelConfig(name=str(path), precision=precision, device="cpu", attention=attention, **kw)  # type: ignore[arg-type]
    return Encoder(cfg, BatchConfig(max_tokens=max_tokens, max_rows=max_rows), ChunkingConfig())


def random_rows(n: int, seed: int = 0, vocab: int = 200, max_len: int = 64) -> list[np.ndarray]:
    """Token rows of mixed lengths (3..max_len) as the tokenizer makes them: <s> ids </s> (ids < vocab)."""
    rng = np.random.default_rng(seed)
    return [np.concatenate([[0], rng.integers(4, vocab, size=k - 2), [2]]).astype(np.int32)
            for k in rng.integers(3, max_len + 1, size=n)]


def assert_same(a: Embeddings, b: Embeddings, tol: float = TOL) -> None:
    assert np.abs(a.dense - b.dense).max() <= tol
    if a.sparse is None:
        assert b.sparse is None
        return
    for i in range(len(a.dense)):
        x, y = a.sparse.row(i), b.sparse.row(i)
        assert x.keys() == y.keys(), f"row {i}"
        assert max((abs(x[t] - y[t]) for t in x), default=0.0) <= tol * 10


@pytest.fixture(scope="module", autouse=True)
def tiny_vocab_fits(tiny_m3_dir: Path) -> None:
    import json

    assert json.loads((tiny_m3_dir / "config.json").read_text())["vocab_size"] > 200, "random_rows draws ids < 200"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Hundreds of tiny batches: with two OpenMP threads on a busy 2-core machine every op waits on a
    descheduled thread (measured 20x slower); one thread keeps this module fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_padded(tiny_m3_dir: Path) -> Encoder:
    return encoder(tiny_m3_dir, "padded")


@pytest.fixture(scope="module")
def tiny_packed(tiny_m3_dir: Path) -> Encoder:
    return encoder(tiny_m3_dir, "unpadded")


@pytest.fixture(scope="module")
def one_by_one(tiny_m3_dir: Path) -> Encoder:
    return encoder(tiny_m3_dir, "padded", max_tokens=64, max_rows=1)


# ---------------------------------------------------------------- packed == padded == SentenceTransformer


def test_packed_equals_padded_and_sentence_transformers(tiny_padded: Encoder, tiny_packed: Encoder,
                                                        tiny_m3_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    assert tiny_packed.unpadded and tiny_packed.model.attention.implementation == VARLEN
    assert not tiny_padded.unpadded
    _, packed = tiny_packed.encode_passages(TINY_TEXTS)
    chunks, padded = tiny_padded.encode_passages(TINY_TEXTS)
    assert_same(packed, padded)
    ref = SentenceTransformer(str(tiny_m3_dir), device="cpu").encode(TINY_TEXTS, convert_to_numpy=True)
    assert np.abs(packed.dense - ref).max() <= TOL
    # padded_len: the batch width when padded, the row's own length when packed.
    np.testing.assert_array_equal(packed.widths, chunks.lengths)
    assert (padded.widths >= chunks.lengths).all() and (padded.widths > chunks.lengths).any()


def test_e5_padded_equals_sentence_transformers(e5_model_dir: Path) -> None:
    """BERT-style positions (from 0), 384 dims cut to 128. ``auto`` packs on CPU, so the reference tests of
    test_encoder_reference.py cover the packed path on e5; this one covers the padded path."""
    from sentence_transformers import SentenceTransformer

    texts = E5_TEXTS[:6] + E5_TEXTS[-4:]
    ref = SentenceTransformer(str(e5_model_dir), device="cpu").encode(texts, convert_to_numpy=True,
                                                                      prompt="passage: ", truncate_dim=128)
    enc = encoder(e5_model_dir, "padded", max_tokens=1024, max_rows=8, dense_dim=128)
    assert not enc.unpadded
    _, emb = enc.encode_passages(texts)
    assert np.abs(emb.dense - ref / np.linalg.norm(ref, axis=1, keepdims=True)).max() <= TOL


# ---------------------------------------------------------------- the one-ahead schedule


class RecordingRunner(ModelRunner):
    """The real runner, noting the order of launches and collects."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.events: list[tuple[str, int]] = []

    def launch(self, rows, batch):  # noqa: ANN001, ANN201 - same signature as the parent
        self.events.append(("launch", int(batch[0])))
        return super().launch(rows, batch)

    def collect(self, f):  # noqa: ANN001, ANN201
        self.events.append(("collect", int(f.batch[0])))
        return super().collect(f)


@pytest.mark.parametrize("which", ["tiny_padded", "tiny_packed"])
def test_many_mixed_batches_keep_order_and_completeness(which: str, one_by_one: Encoder,
                                                        request: pytest.FixtureRequest) -> None:
    enc: Encoder = request.getfixturevalue(which)
    ids = random_rows(240, seed=1)
    alone = one_by_one.embed_ids(ids)
    before = enc.stats.batches
    emb = enc.embed_ids(ids)
    assert enc.stats.batches - before >= 30, "many batches"
    assert_same(emb, alone)
    assert emb.errors == {} and emb.fp32_reruns == 0

    rec = RecordingRunner(enc.model, enc.runner.post, enc.runner.reload_fp32)
    rows = TokenRows.from_list(ids)
    seen = [b for b, _ in run_batches(rec, rows, Budget(160, 4))]
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(ids)))
    # Batch k+1 is launched before batch k is collected: at most DEPTH in flight, and DEPTH reached.
    in_flight, peak = 0, 0
    for kind, _ in rec.events:
        in_flight += 1 if kind == "launch" else -1
        peak = max(peak, in_flight)
        assert 0 <= in_flight <= DEPTH
    assert peak == DEPTH and rec.events[:3] == [("launch", int(seen[0][0])), ("launch", int(seen[1][0])),
                                                 ("collect", int(seen[0][0]))]


# ---------------------------------------------------------------- out-of-memory back-off


def inject_oom(enc: Encoder, max_ids: int, error: BaseException) -> object:
    """Fault injection: the model raises ``error`` on any forward pass over more than ``max_ids`` positions.

    The hook sits on the embeddings module (sentence-transformers calls the model's ``forward``
    directly, which skips the model's own hooks).
    """

    def hook(module: object, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.numel() > max_ids:
            raise error

    return enc.model.st.transformers_model.embeddings.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("attention", ["padded", "unpadded"])
@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")])
def test_out_of_memory_halves_the_budget_and_retries(tiny_m3_dir: Path, one_by_one: Encoder, attention: str,
                                                     error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    enc = encoder(tiny_m3_dir, attention, max_tokens=1024, max_rows=64)
    ids = random_rows(60, seed=2)
    handle = inject_oom(enc, 300, error)
    with caplog.at_level(logging.WARNING, logger="embedder.schedule"):
        emb = enc.embed_ids(ids)
    handle.remove()
    assert_same(emb, one_by_one.embed_ids(ids))
    assert enc.stats.oom_halvings >= 2 and enc.budget.max_tokens <= 300
    assert "out of memory on a batch" in caplog.text and "token budget 1024 ->" in caplog.text
    # The halved budget stays for later calls: no new out-of-memory.
    halvings = enc.stats.oom_halvings
    handle = inject_oom(enc, 300, error)
    enc.embed_ids(ids[:20])
    handle.remove()
    assert enc.stats.oom_halvings == halvings


def test_out_of_memory_on_one_row_is_raised(tiny_m3_dir: Path) -> None:
    enc = encoder(tiny_m3_dir, "padded")
    handle = inject_oom(enc, 5, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(RuntimeError, match="single chunk of 10 tokens") as e:
        enc.embed_ids([np.arange(2, 11, dtype=np.int32), np.arange(2, 12, dtype=np.int32)])
    handle.remove()
    assert isinstance(e.value.__cause__, torch.OutOfMemoryError)
    with pytest.raises(ValueError, match="not OOM"):  # anything else passes through untouched
        handle = inject_oom(enc, 5, ValueError("not OOM"))
        try:
            enc.embed_ids([np.arange(2, 11, dtype=np.int32)])
        finally:
            handle.remove()


# ---------------------------------------------------------------- non-finite guard and padding


def test_inf_on_padding_positions_triggers_no_rerun(tiny_m3_dir: Path, one_by_one: Encoder) -> None:
    """fp16, padded: the transformer's output is made inf at every padding position; no rerun, same vectors."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    enc = encoder(tiny_m3_dir, "padded", precision="fp16")
    hazard = {}

    def poison_padding(module: object, args: tuple, features: dict) -> dict:
        mask = features["attention_mask"].bool()
        te = features["token_embeddings"].clone()
        te[~mask] = float("inf")
        features["token_embeddings"] = te
        if (~mask).any():  # what multiplying by the mask would give: inf x 0 = NaN
            hazard["mean"] = Pooling(te.shape[-1], "mean")({"token_embeddings": te, "attention_mask": mask.long()})
        return features

    first = next(iter(enc.model.st.children()))
    handle = first.register_forward_hook(poison_padding)
    ids = random_rows(40, seed=3)
    emb = enc.embed_ids(ids)
    handle.remove()
    assert torch.isnan(hazard["mean"]["sentence_embedding"]).any(), "the hazard is real"
    assert emb.fp32_reruns == 0 and emb.errors == {}
    assert enc.runner._fp32 is None, "no fp32 copy loaded without a rerun"
    ref = one_by_one.embed_ids(ids)
    assert np.abs(emb.dense - ref.dense).max() <= 5e-3
    assert all(emb.sparse.row(i).keys() == ref.sparse.row(i).keys() for i in range(len(ids)))


# ---------------------------------------------------------------- which attention, where


def test_attention_choice(tiny_padded: Encoder) -> None:
    hf = tiny_padded.model.st.transformers_model
    cpu = choose_attention("auto", "cpu", torch.bfloat16, hf, chain_ok=True)
    assert cpu.unpadded and cpu.implementation == VARLEN
    assert not choose_attention("padded", "cpu", torch.bfloat16, hf, chain_ok=True).unpadded
    chain = choose_attention("auto", "cpu", torch.float32, hf, chain_ok=False)
    assert not chain.unpadded and "module chain" in chain.reason
    # CUDA in fp32: flash kernels need half precision.
    fp32 = choose_attention("auto", "cuda", torch.float32, hf, chain_ok=True)
    assert not fp32.unpadded and "fp16/bf16" in fp32.reason
    with pytest.raises(ValueError, match="unpadded but varlen flash attention needs fp16/bf16"):
        choose_attention("unpadded", "cuda", torch.float32, hf, chain_ok=True)
    with pytest.raises(ValueError, match="choose one of"):
        choose_attention("packed", "cpu", torch.float32, hf, chain_ok=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where CUDA is absent")
def test_half_precision_on_cuda_without_flash_attn_falls_back_to_padded(tiny_padded: Encoder) -> None:
    """No flash-attn package here, and torch's varlen kernel fails its probe without a GPU: padded, with why."""
    from transformers.utils import is_flash_attn_2_available

    assert not is_flash_attn_2_available()
    hf = tiny_padded.model.st.transformers_model
    choice = choose_attention("auto", "cuda", torch.float16, hf, chain_ok=True)
    assert not choice.unpadded and "flash-attn is not installed" in choice.reason and "probe" in choice.reason
    assert probe_varlen("cuda", torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_varlen_probe_passes(dtype: torch.dtype) -> None:
    assert probe_varlen("cpu", dtype) == ""


def test_cpu_varlen_attention_equals_sdpa_per_sequence() -> None:
    """Many sequences in no particular order (several groups, equal and mixed lengths) against SDPA one by one."""
    from embedder.attention import GROUP, varlen_attention

    lengths = np.random.default_rng(5).integers(1, 40, size=3 * GROUP + 5).tolist() + [7] * GROUP
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, int(cu[-1]), 8, generator=g) for _ in range(3))
    out = varlen_attention(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                           max_length_q=max(lengths), max_length_k=max(lengths))[0][0]
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)
        torch.testing.assert_close(out[a:b], ref[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
