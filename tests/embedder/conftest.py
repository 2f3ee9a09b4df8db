"""Fixtures of the embedder suite: the tiny random BGE-M3-shaped model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_m3


@pytest.fixture(scope="session")
def tiny_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random XLM-R model folder with CLS pooling, Normalize and ``sparse_linear.pt``."""
    return build_tiny_m3(tmp_path_factory.mktemp("models") / "tiny-m3")
