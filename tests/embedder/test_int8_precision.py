"""model.precision int8: the Linear layers quantized to int8 on CPU, opt-in, vectors close to fp32's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedder.precision import resolve_dtype
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Der Router startet nach dem Update neu.",
         "Быстрая коричневая лиса", "コーヒーメーカーの水垢を取る方法", "A longer sentence about bicycles, "
         "coffee machines and the warranty that covers both for two more years."]


def test_int8_is_cpu_only_and_never_chosen_by_auto() -> None:
    import torch

    assert resolve_dtype("int8", "cpu") == torch.float32  # loaded in fp32, then quantized
    assert resolve_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="CPUs only"):
        resolve_dtype("int8", "cuda")
    with pytest.raises(ValueError, match="'int8'"):
        ModelConfig(name="m", precision="int4")  # type: ignore[arg-type]


def test_int8_quantizes_every_linear_layer_and_stays_close_to_fp32(tiny_m3_dir: Path) -> None:
    import torch

    from embedder.encoder import Encoder

    def encoder(precision: str) -> Encoder:
        return Encoder(ModelConfig(name=str(tiny_m3_dir), precision=precision, device="cpu"),  # type: ignore[arg-type]
                       BatchConfig(max_tokens=256), ChunkingConfig())

    q, f = encoder("int8"), encoder("fp32")
    modules = list(q.model.st.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in modules) >= 4
    _, a = q.encode_passages(TEXTS)
    _, b = f.encode_passages(TEXTS)
    assert np.isfinite(a.dense).all() and not np.array_equal(a.dense, b.dense)
    cosine = np.sum(a.dense * b.dense, axis=1) / np.linalg.norm(a.dense, axis=1) / np.linalg.norm(b.dense, axis=1)
    assert cosine.min() > 0.9, cosine
