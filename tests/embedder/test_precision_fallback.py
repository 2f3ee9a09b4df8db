"""fp16 overflow -> fp32 re-run of the batch, on copies of the tiny model made to overflow; dtype/device choice.

On CPU, torch computes LayerNorm in fp32 even for fp16 tensors, so scaling the word embeddings
does not overflow (and scaling them past 65504 makes the fp16 *weights* inf, which no re-run can
repair). The copies below overflow in fp16 *activations* instead, with weights that fp16 holds:

* ``ffn``: the last layer's feed-forward is scaled so that its output exceeds 65504 -> inf -> NaN
  after LayerNorm: dense and sparse outputs non-finite.
* ``sparse_head``: only ``sparse_linear.pt`` is scaled: dense stays finite, the token weights overflow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from embedder.encoder import Embeddings, Encoder
from embedder.precision import cpu_has_native_bf16, resolve_device, resolve_dtype
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hund",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Reset the router",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "Descale the coffee machine every month with citric acid.",
]
FP16_MAX = 65504.0


def scaled_copy(src: Path, dst: Path, *, ffn: bool, sparse_head: bool) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if ffn:
        state = load_file(src / "model.safetensors")
        last = "encoder.layer.1."
        state[last + "intermediate.dense.weight"] = state[last + "intermediate.dense.weight"] * 30
        state[last + "output.dense.weight"] = state[last + "output.dense.weight"] * 1e5
        assert max(float(v.abs().max()) for v in state.values()) < FP16_MAX, "weights must stay representable"
        save_file(state, dst / "model.safetensors")
    if sparse_head:
        head = torch.load(src / "sparse_linear.pt", weights_only=True)
        head["weight"] = head["weight"] * (6e4 / head["weight"].abs().max())
        torch.save(head, dst / "sparse_linear.pt")
    return dst


@pytest.fixture(scope="module")
def ffn_overflow_dir(tiny_m3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaled_copy(tiny_m3_dir, tmp_path_factory.mktemp("ovf") / "ffn", ffn=True, sparse_head=False)


@pytest.fixture(scope="module")
def head_overflow_dir(tiny_m3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaled_copy(tiny_m3_dir, tmp_path_factory.mktemp("ovf") / "head", ffn=False, sparse_head=True)


def encode(path: Path, precision: str) -> tuple[Encoder, Embeddings]:
    enc = Encoder(ModelConfig(name=str(path), precision=precision, device="cpu"),  # type: ignore[arg-type]
                  BatchConfig(max_tokens=128, max_rows=2), ChunkingConfig())
    _, emb = enc.encode_passages(TEXTS)
    return enc, emb


def assert_close_to_fp32(emb: Embeddings, ref: Embeddings) -> None:
    """fp32 re-run vs a true fp32 encoder: the re-run uses the fp16-rounded weights, hence the tolerance."""
    assert np.abs(emb.dense - ref.dense).max() <= 2e-3
    for i in range(len(TEXTS)):
        got, want = emb.sparse.row(i), ref.sparse.row(i)
        assert want, f"text {i} has sparse weights in fp32"
        scale = max(want.values())
        for t in set(got) | set(want):
            assert abs(got.get(t, 0.0) - want.get(t, 0.0)) <= 0.05 * scale, f"text {i} token {t}"


def test_ffn_copy_overflows_in_fp16_only(ffn_overflow_dir: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(ffn_overflow_dir), device="cpu")
    assert np.isfinite(st.encode(TEXTS, convert_to_numpy=True)).all()
    st.to(torch.float16)
    half = st.encode(TEXTS, convert_to_tensor=True).float().numpy()
    assert (~np.isfinite(half)).any(axis=1).all(), "the fixture must overflow in fp16 on this CPU"


def test_fp16_overflow_is_rerun_in_fp32(ffn_overflow_dir: Path) -> None:
    _, ref = encode(ffn_overflow_dir, "fp32")
    enc, emb = encode(ffn_overflow_dir, "fp16")
    assert enc.model.dtype.itemsize == 2
    assert np.isfinite(emb.dense).all() and np.isfinite(emb.sparse.values).all()
    assert emb.errors == {}
    assert enc.stats.fp32_reruns >= 1 and enc.stats.fp32_reruns == enc.stats.batches
    np.testing.assert_allclose(np.linalg.norm(emb.dense, axis=1), 1.0, atol=1e-5)
    assert_close_to_fp32(emb, ref)


def test_fp16_overflow_in_the_sparse_head_alone_is_rerun(head_overflow_dir: Path) -> None:
    """Dense is finite in fp16 but the lexical weights are not: the batch must still be re-run in fp32."""
    _, ref = encode(head_overflow_dir, "fp32")
    assert ref.sparse.values.max() > FP16_MAX, "the head must produce weights beyond fp16's range"
    enc, emb = encode(head_overflow_dir, "fp16")
    assert emb.errors == {}
    assert enc.stats.fp32_reruns >= 1
    assert np.isfinite(emb.sparse.values).all()
    assert_close_to_fp32(emb, ref)


def test_fp16_without_overflow_is_not_rerun(tiny_m3_dir: Path) -> None:
    _, ref = encode(tiny_m3_dir, "fp32")
    enc, emb = encode(tiny_m3_dir, "fp16")
    assert enc.stats.fp32_reruns == 0 and emb.errors == {}
    assert np.abs(emb.dense - ref.dense).max() <= 5e-3


@pytest.mark.parametrize("native_bf16", [True, False])
def test_resolve_dtype(native_bf16: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from embedder import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)  # the CPU, not the rule under test
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("auto", "cuda:1") == torch.float16
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if native_bf16 else torch.float32)
    for name, dtype in [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]:
        assert resolve_dtype(name, "cpu") == dtype
        assert resolve_dtype(name, "cuda") == dtype


CPU_FLAGS = {  # "flags" lines of /proc/cpuinfo, shortened
    "skylake_avx512": "fpu vme sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl",
    "cooper_lake": "fpu vme sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16",
    "sapphire_rapids": "fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8",
    "amx_without_avx512_bf16": "fpu sse2 avx2 avx512f amx_bf16 amx_tile",
    "zen3": "fpu vme sse2 avx avx2 sha_ni vaes vpclmulqdq",
}


@pytest.mark.parametrize(("cpu", "native"), [("skylake_avx512", False), ("cooper_lake", True),
                                             ("sapphire_rapids", True), ("amx_without_avx512_bf16", True),
                                             ("zen3", False)])
def test_cpu_bf16_detection(cpu: str, native: bool, tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: some cpu\nflags\t\t: {CPU_FLAGS[cpu]}\n\n"
                    f"processor\t: 1\nflags\t\t: {CPU_FLAGS[cpu]}\n")
    assert cpu_has_native_bf16(str(info)) is native


def test_cpu_bf16_detection_without_flags(tmp_path: Path) -> None:
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # no x86 flags line
    assert cpu_has_native_bf16(str(tmp_path / "arm")) is False
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_resolve_device() -> None:
    import torch

    assert resolve_device(ModelConfig(name="m", device="cpu")) == "cpu"
    assert resolve_device(ModelConfig(name="m")) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            resolve_device(ModelConfig(name="m", device="cuda"))


@pytest.mark.parametrize("kw", [{"precision": "fp8"}, {"device": "tpu"}, {"sparse": "yes"}, {"dense_dim": 0},
                                {"sparse_top_k": -1}, {"max_seq_length": 1.5}, {"name": ""}])
def test_model_config_validation(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**{"name": "m", **kw})  # type: ignore[arg-type]
