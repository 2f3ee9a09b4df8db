"""Encoder output against independent references.

Dense: ``SentenceTransformer.encode`` in fp32 (tiny random BGE-M3-shaped model and the offline
multilingual-e5-small). Sparse: BGE-M3's lexical-weight formula written out with ``transformers``
and a plain Python loop. Plus the configuration errors the encoder must raise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedder.encoder import Encoder
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig
from embedder.vectors import normalize

TOL = 1e-5

# Varied scripts and lengths (1 to ~55 tokens with the tiny tokenizer), so that batches pad differently.
TINY_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hund",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "a",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Reset the router?",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "Descale the coffee machine every month with citric acid 2024.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "fox dog",
]

E5_TEXTS = TINY_TEXTS + [
    "Wie setze ich den Router auf Werkseinstellungen zurück? Halten Sie die Reset-Taste zehn Sekunden lang gedrückt, "
    "bis die LED blinkt. " * 3,
    "Comment détartrer une machine à café ? Utilisez de l'acide citrique dissous dans l'eau chaude, une fois par mois.",
    "如何重置路由器？按住重置按钮十秒钟，直到指示灯闪烁，然后等待设备重新启动。" * 3,
    "ok",
]


def fp32(name: str | Path, **kw: object) -> ModelConfig:
    return ModelConfig(name=str(name), precision="fp32", device="cpu", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fixtures (models loaded once per module)


@pytest.fixture(scope="module")
def tiny_st(tiny_m3_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_m3_dir), device="cpu")


@pytest.fixture(scope="module")
def tiny_enc(tiny_m3_dir: Path) -> Encoder:
    # A small budget: the 15 texts go through several batches of different widths.
    return Encoder(fp32(tiny_m3_dir), BatchConfig(max_tokens=160, max_rows=4), ChunkingConfig())


@pytest.fixture(scope="module")
def e5_st(e5_model_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(e5_model_dir), device="cpu")


@pytest.fixture(scope="module")
def e5_enc(e5_model_dir: Path) -> Encoder:
    return Encoder(fp32(e5_model_dir), BatchConfig(max_tokens=1024, max_rows=8), ChunkingConfig())


# ---------------------------------------------------------------- dense vs SentenceTransformer


def test_tiny_passages_equal_sentence_transformers(tiny_enc: Encoder, tiny_st) -> None:
    before = tiny_enc.stats.batches
    chunks, emb = tiny_enc.encode_passages(TINY_TEXTS)
    assert chunks.doc == list(range(len(TINY_TEXTS))), "every test text must fit one chunk"
    assert tiny_enc.stats.batches - before >= 3
    ref = tiny_st.encode(TINY_TEXTS, batch_size=32, convert_to_numpy=True)
    assert emb.dense.shape == ref.shape == (len(TINY_TEXTS), 32)
    assert emb.dense.dtype == np.float32
    assert np.abs(emb.dense - ref).max() <= TOL
    assert emb.errors == {}


def test_tiny_queries_equal_sentence_transformers(tiny_enc: Encoder, tiny_st) -> None:
    emb = tiny_enc.encode_queries(TINY_TEXTS)
    ref = tiny_st.encode(TINY_TEXTS, batch_size=32, convert_to_numpy=True)
    assert np.abs(emb.dense - ref).max() <= TOL


def test_tiny_long_query_truncated_like_sentence_transformers(tiny_enc: Encoder, tiny_st) -> None:
    long = " ".join(TINY_TEXTS)  # far over the 64-token limit: ST truncates it, and so must queries
    emb = tiny_enc.encode_queries([long, "Hund"])
    ref = tiny_st.encode([long, "Hund"], batch_size=32, convert_to_numpy=True)
    assert np.abs(emb.dense - ref).max() <= TOL


@pytest.mark.parametrize("k", [8, 20])
def test_tiny_matryoshka_equals_st_truncate_dim(tiny_m3_dir: Path, tiny_st, k: int) -> None:
    enc = Encoder(fp32(tiny_m3_dir, dense_dim=k), BatchConfig(max_tokens=128, max_rows=4), ChunkingConfig())
    assert enc.dim == k
    _, emb = enc.encode_passages(TINY_TEXTS)
    ref = normalize(tiny_st.encode(TINY_TEXTS, batch_size=32, convert_to_numpy=True, truncate_dim=k))
    assert emb.dense.shape == (len(TINY_TEXTS), k)
    assert np.abs(emb.dense - ref).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(emb.dense, axis=1), 1.0, atol=1e-5)


def test_output_independent_of_packing_and_order(tiny_m3_dir: Path, tiny_enc: Encoder) -> None:
    """Row i of the output is text i's vector whatever the batch composition (checks the scatter back)."""
    _, base = tiny_enc.encode_passages(TINY_TEXTS)
    one_by_one = Encoder(fp32(tiny_m3_dir), BatchConfig(max_tokens=64, max_rows=1), ChunkingConfig())
    perm = np.random.default_rng(1).permutation(len(TINY_TEXTS))
    _, other = one_by_one.encode_passages([TINY_TEXTS[i] for i in perm])
    assert one_by_one.stats.batches == len(TINY_TEXTS)
    assert np.abs(other.dense - base.dense[perm]).max() <= TOL
    for j, i in enumerate(perm):
        a, b = other.sparse.row(j), base.sparse.row(int(i))
        assert a.keys() == b.keys()
        assert max((abs(a[t] - b[t]) for t in a), default=0.0) <= TOL


def test_empty_input(tiny_enc: Encoder) -> None:
    emb = tiny_enc.embed_ids([])
    assert emb.dense.shape == (0, 32)
    np.testing.assert_array_equal(emb.sparse.offsets, [0])


def test_e5_passages_equal_sentence_transformers(e5_enc: Encoder, e5_st) -> None:
    chunks, emb = e5_enc.encode_passages(E5_TEXTS)
    assert chunks.doc == list(range(len(E5_TEXTS)))
    ref = e5_st.encode(E5_TEXTS, batch_size=32, convert_to_numpy=True, prompt="passage: ")
    assert emb.dense.shape == ref.shape == (len(E5_TEXTS), 384)
    assert np.abs(emb.dense - ref).max() <= TOL
    # The prompt matters: without it the vectors differ clearly.
    plain = e5_st.encode(E5_TEXTS[:3], batch_size=32, convert_to_numpy=True)
    assert np.abs(emb.dense[:3] - plain).max() > 1e-2


def test_e5_queries_equal_sentence_transformers(e5_enc: Encoder, e5_st) -> None:
    emb = e5_enc.encode_queries(E5_TEXTS)
    ref = e5_st.encode(E5_TEXTS, batch_size=32, convert_to_numpy=True, prompt="query: ")
    assert np.abs(emb.dense - ref).max() <= TOL


def test_e5_matryoshka_equals_st_truncate_dim(e5_model_dir: Path, e5_st) -> None:
    k = 128
    texts = E5_TEXTS[:8] + E5_TEXTS[-3:]
    enc = Encoder(fp32(e5_model_dir, dense_dim=k), BatchConfig(max_tokens=1024, max_rows=8), ChunkingConfig())
    _, emb = enc.encode_passages(texts)
    ref = normalize(e5_st.encode(texts, batch_size=32, convert_to_numpy=True, prompt="passage: ", truncate_dim=k))
    assert emb.dense.shape == (len(texts), k)
    assert np.abs(emb.dense - ref).max() <= TOL


# ---------------------------------------------------------------- sparse vs the BGE-M3 formula


@pytest.fixture(scope="module")
def sparse_reference(tiny_m3_dir: Path) -> list[dict[int, float]]:
    """relu(sparse_linear(last_hidden_state)) per token, max per token id, specials and zeros dropped."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_m3_dir))
    model = AutoModel.from_pretrained(str(tiny_m3_dir), dtype=torch.float32).eval()
    head = torch.nn.Linear(model.config.hidden_size, 1)
    head.load_state_dict(torch.load(tiny_m3_dir / "sparse_linear.pt", map_location="cpu", weights_only=True))
    unused = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    out = []
    with torch.no_grad():
        for text in TINY_TEXTS:  # one text at a time: no padding in the reference
            enc = tok(text, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            weights = torch.relu(head(hidden)).squeeze(-1)
            row: dict[int, float] = {}
            for token_id, w in zip(enc["input_ids"][0].tolist(), weights.tolist()):
                if token_id in unused or w <= 0:
                    continue
                row[token_id] = max(row.get(token_id, 0.0), w)
            out.append(row)
    assert any(3 in tok(t)["input_ids"] for t in TINY_TEXTS), "the texts should exercise the UNK drop"
    return out


def test_sparse_equals_reference_formula(tiny_enc: Encoder, sparse_reference: list[dict[int, float]]) -> None:
    assert tiny_enc.has_sparse
    _, emb = tiny_enc.encode_passages(TINY_TEXTS)
    assert emb.sparse is not None and len(emb.sparse.offsets) == len(TINY_TEXTS) + 1
    for i, want in enumerate(sparse_reference):
        got = emb.sparse.row(i)
        assert got.keys() == want.keys(), f"text {i}"
        for t in want:
            assert abs(got[t] - want[t]) <= TOL, f"text {i} token {t}: {got[t]} vs {want[t]}"
    assert sum(len(r) for r in sparse_reference) > 50, "the reference should not be trivially empty"


def test_sparse_top_k_keeps_the_k_largest(tiny_m3_dir: Path, sparse_reference: list[dict[int, float]]) -> None:
    k = 3
    enc = Encoder(fp32(tiny_m3_dir, sparse_top_k=k), BatchConfig(max_tokens=160, max_rows=4), ChunkingConfig())
    _, emb = enc.encode_passages(TINY_TEXTS)
    for i, full in enumerate(sparse_reference):
        got = emb.sparse.row(i)
        assert len(got) == min(k, len(full))
        assert set(got) <= set(full)
        kth = sorted(full.values(), reverse=True)[len(got) - 1] if got else None
        for t, w in got.items():
            assert abs(w - full[t]) <= TOL
        dropped = set(full) - set(got)
        assert all(full[t] <= kth + TOL for t in dropped), f"text {i}: a dropped weight beats a kept one"


def test_sparse_false_turns_the_head_off(tiny_m3_dir: Path) -> None:
    enc = Encoder(fp32(tiny_m3_dir, sparse=False), BatchConfig(max_tokens=128), ChunkingConfig())
    assert not enc.has_sparse
    _, emb = enc.encode_passages(["Hund"])
    assert emb.sparse is None


# ---------------------------------------------------------------- configuration errors


def test_dense_dim_larger_than_model_names_both_numbers(tiny_m3_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"dense_dim 33\b.*\b32\b"):
        Encoder(fp32(tiny_m3_dir, dense_dim=33), BatchConfig(), ChunkingConfig())


def test_sparse_true_without_head_is_an_error(e5_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="sparse_linear.pt"):
        Encoder(fp32(e5_model_dir, sparse=True), BatchConfig(), ChunkingConfig())


def test_sparse_auto_without_head_is_dense_only(e5_enc: Encoder) -> None:
    assert e5_enc.cfg.sparse == "auto"
    assert e5_enc.has_sparse is False
    _, emb = e5_enc.encode_passages(["Hund"])
    assert emb.sparse is None and emb.dense.shape == (1, 384)


def test_batch_budget_below_one_sequence_is_an_error(tiny_m3_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"max_tokens 32\b.*\b64\b"):
        Encoder(fp32(tiny_m3_dir), BatchConfig(max_tokens=32), ChunkingConfig())
    # A smaller max_seq_length makes the same budget valid.
    enc = Encoder(fp32(tiny_m3_dir, max_seq_length=32), BatchConfig(max_tokens=32), ChunkingConfig())
    assert enc.info.max_seq_length == 32


@pytest.mark.parametrize(("which", "too_long", "limit"), [("tiny", 65, 64), ("e5", 513, 512)])
def test_max_seq_length_over_the_model_limit_is_an_error(which: str, too_long: int, limit: int,
                                                         request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue("tiny_m3_dir" if which == "tiny" else "e5_model_dir")
    with pytest.raises(ValueError, match=rf"{too_long}\b.*\b{limit}\b"):
        Encoder(fp32(path, max_seq_length=too_long), BatchConfig(), ChunkingConfig())
