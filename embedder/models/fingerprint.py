"""What decides a document's vectors, as short hashes: the model's files, and each document's text.

* :func:`model_fingerprint`: a hash of every file of the model folder (its bytes: a model updated
  in place at the same path, even with the same sizes and dates, gets another fingerprint), or
  for an ``s3://`` model of every object's key, size and ETag (nothing is downloaded).
* :func:`vector_fingerprint`: the model's fingerprint plus every setting that changes a vector
  (dimension, sparse, prefix, sequence limit, normalisation, chunking, precision class).
* :func:`doc_fingerprints`: per document, a 64-bit hash of the vector fingerprint and the
  document's text: equal fingerprints mean equal rows, so an incremental run skips the document.

fp32, fp16 and bf16 are one precision class (the same model, vectors equal within rounding);
a quantized model (int8) would be another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from embedder.settings import ChunkingConfig, ModelConfig

log = logging.getLogger(__name__)

CHUNK = 1 << 22  # bytes hashed at a time


def model_fingerprint(cfg: ModelConfig, path: str | None = None) -> str:
    """32 hex digits naming the model's files: every byte of a local folder, or keys/sizes/ETags on s3://.

    Args:
        cfg: The model config.
        path: The resolved local folder or hub id (:func:`embedder.models.source.resolve_model_path`);
            resolved here when absent. Ignored for ``s3://`` models (the objects are listed instead).
    """
    started = time.monotonic()
    h = hashlib.blake2b(digest_size=16)
    if cfg.name.startswith("s3://"):
        from embedder.models.source import s3_objects

        for key, size, etag in s3_objects(cfg.name, cfg.storage_options):
            h.update(f"{key}\0{size}\0{etag}\n".encode())
    else:
        if path is None:
            from embedder.models.source import resolve_model_path

            path = resolve_model_path(cfg)
        folder = Path(path)
        if not folder.is_dir():
            folder = _hub_snapshot(path)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"model {cfg.name}: no files in {folder} to fingerprint")
        for file in files:
            h.update(f"{file.relative_to(folder).as_posix()}\0{file.stat().st_size}\n".encode())
            with open(file, "rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
    digest = h.hexdigest()
    log.info("model %s: fingerprint %s (%.1fs)", cfg.name, digest, time.monotonic() - started)
    return digest


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a cached hub model (offline)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, local_files_only=True))


def precision_class(precision: str) -> str:
    """Settings whose vectors differ by more than rounding are different classes."""
    return "int8" if precision == "int8" else "float"


def vector_fingerprint(model: ModelConfig, chunking: ChunkingConfig, *, model_fp: str, dense_dim: int,
                       sparse: bool, passage_prompt: str, max_seq_length: int) -> str:
    """32 hex digits naming everything besides the text that decides a document's rows."""
    settings = {"model": model_fp, "dense_dim": dense_dim, "sparse": sparse, "sparse_top_k": model.sparse_top_k,
                "prefix": model.passage_prefix if model.passage_prefix is not None else passage_prompt,
                "max_seq_length": max_seq_length, "normalize": model.normalize,
                "chunking": [chunking.long_docs, chunking.chunk_tokens, chunking.overlap],
                "precision": precision_class(model.precision)}
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=16).hexdigest()


def doc_fingerprints(vector_fp: str, texts: list[str | None]) -> np.ndarray:
    """uint64 per text (0 for a missing text): a hash of ``vector_fp`` and the text's UTF-8 bytes."""
    seed = hashlib.blake2b(vector_fp.encode(), digest_size=16)
    out = np.zeros(len(texts), np.uint64)
    for i, text in enumerate(texts):
        if text is None:
            continue
        h = seed.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        out[i] = int.from_bytes(h.digest()[:8], "little") or 1  # 0 means "none"
    return out


def fingerprint_text(fp: int, n_chunks: int, n_tokens: int) -> str:
    """What a row stores of its document (``embed_fp``): the fingerprint, its chunks and tokens."""
    return f"{int(fp):016x}/{int(n_chunks)}/{int(n_tokens)}"


def parse_fingerprint_text(value: str | None) -> tuple[int, int, int] | None:
    """``(fp, n_chunks, n_tokens)`` of an ``embed_fp`` value; None when it is not one."""
    if not value:
        return None
    try:
        fp, chunks, tokens = value.split("/")
        return int(fp, 16), int(chunks), int(tokens)
    except ValueError:
        return None


__all__ = ["model_fingerprint", "vector_fingerprint", "doc_fingerprints", "precision_class",
           "fingerprint_text", "parse_fingerprint_text"]
