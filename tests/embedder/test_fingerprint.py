"""Fingerprints: a model's files (local bytes, or s3:// ETags) and each document's text with the vector settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from embedder.models.fingerprint import (
    doc_fingerprints,
    fingerprint_text,
    model_fingerprint,
    parse_fingerprint_text,
    vector_fingerprint,
)
from embedder.models.source import resolve_model_path
from embedder.settings import ChunkingConfig, ModelConfig
from tests.embedder.test_model_source import PREFIX, s3_model, s3fs_of, upload  # noqa: F401 - s3_model: fixture


def test_a_model_changed_in_place_with_the_same_size_and_time_gets_another_fingerprint(tiny_m3_dir: Path,
                                                                                      tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_m3_dir, model)
    cfg = ModelConfig(name=str(model))
    before = model_fingerprint(cfg)
    assert model_fingerprint(cfg) == before and len(before) == 32
    weights = model / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as rsync -a or cp -p would leave it
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert model_fingerprint(cfg) != before


def test_an_s3_model_replaced_in_place_is_fingerprinted_and_downloaded_again(s3_model: ModelConfig,  # noqa: F811
                                                                              s3_server: dict[str, object],
                                                                              s3_bucket: str, tiny_m3_dir: Path,
                                                                              tmp_path: Path) -> None:
    first_fp = model_fingerprint(s3_model)
    first = Path(resolve_model_path(s3_model))
    changed = tmp_path / "changed"
    shutil.copytree(tiny_m3_dir, changed)
    data = bytearray((changed / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (changed / "model.safetensors").write_bytes(bytes(data))
    upload(s3fs_of(s3_server), changed, f"{s3_bucket}/{PREFIX}")  # same keys, same sizes, new bytes
    assert model_fingerprint(s3_model) != first_fp
    second = Path(resolve_model_path(s3_model))
    assert second != first and (second / "model.safetensors").read_bytes() == bytes(data)
    assert (first / "model.safetensors").read_bytes() == (tiny_m3_dir / "model.safetensors").read_bytes()


def test_document_fingerprints_follow_the_text_and_every_vector_setting() -> None:
    model = ModelConfig(name="m")
    base = {"model_fp": "a" * 32, "dense_dim": 256, "sparse": False, "passage_prompt": "passage: ",
            "max_seq_length": 512}
    vfp = vector_fingerprint(model, ChunkingConfig(), **base)
    others = [vector_fingerprint(model, ChunkingConfig(), **{**base, "model_fp": "b" * 32}),
              vector_fingerprint(model, ChunkingConfig(), **{**base, "dense_dim": 128}),
              vector_fingerprint(model, ChunkingConfig(overlap=7), **base),
              vector_fingerprint(ModelConfig(name="m", passage_prefix="doc: "), ChunkingConfig(), **base),
              vector_fingerprint(ModelConfig(name="m", normalize=False), ChunkingConfig(), **base)]
    assert len({vfp, *others}) == 6
    # fp32 / bf16 / fp16 are one class: the same rows within rounding, nothing to embed again
    assert vector_fingerprint(ModelConfig(name="m", precision="bf16"), ChunkingConfig(), **base) == vfp
    fps = doc_fingerprints(vfp, ["Hallo Welt", "Hallo Welt", "Hallo Welt!", None, ""])
    assert fps.dtype == np.uint64 and fps[0] == fps[1] != fps[2] and fps[3] == 0 and fps[4] != 0
    assert doc_fingerprints(others[0], ["Hallo Welt"])[0] != fps[0]
    assert parse_fingerprint_text(fingerprint_text(fps[0], 3, 1500)) == (int(fps[0]), 3, 1500)
    assert parse_fingerprint_text("") is None and parse_fingerprint_text("zz/1") is None
