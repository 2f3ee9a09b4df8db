"""Dense vectors in fewer bytes: float16, bfloat16, int8 and binary, and how each is searched.

Pure numpy (no model, no I/O): the job converts what it writes with these, and ``jobs.evaluate``
measures what each type costs in recall on the user's own data.

* ``float16`` / ``bfloat16``: rounding to nearest (bfloat16 keeps float32's exponent, 8 bits of mantissa).
* ``int8``: one **symmetric scale for all dimensions**, ``x -> round(x * scale)`` clipped to
  -127..127, calibrated on a sample so that ``CLIP_QUANTILE`` of the absolute values fit. A single
  scale keeps inner products proportional (``q'.d' ~ scale^2 q.d``), so the ranking under IP is that of
  the float vectors up to rounding; per-dimension ranges would weight dimensions unequally. Queries
  are quantized with the same scale (it is stored with the collection).
* ``binary``: one sign bit per dimension, packed 8 per byte (the dimension must be a multiple of 8),
  compared by Hamming distance; ``rescore`` re-ranks the best ``RESCORE_FACTOR x k`` candidates with a
  float32 copy kept elsewhere (or the query's float vector against the binary one when there is none).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

DenseType = Literal["float32", "float16", "bfloat16", "int8", "binary"]
DENSE_TYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8", "binary")
CLIP_QUANTILE = 0.9999  # int8: the share of |values| of the calibration sample that fit without clipping
RESCORE_FACTOR = 10


def bytes_per_vector(dim: int, dense_type: str) -> int:
    """Bytes one stored vector takes."""
    if dense_type == "float32":
        return 4 * dim
    if dense_type in ("float16", "bfloat16"):
        return 2 * dim
    if dense_type == "int8":
        return dim
    if dense_type == "binary":
        return (dim + 7) // 8
    raise ValueError(f"unknown dense type {dense_type!r}; choose one of {', '.join(DENSE_TYPES)}")


def check_dim(dim: int, dense_type: str) -> None:
    """Raise a ValueError when ``dense_type`` cannot store vectors of ``dim`` dimensions."""
    if dense_type == "binary" and dim % 8:
        raise ValueError(f"milvus.dense_type binary needs a dimension that is a multiple of 8, got {dim}; "
                         "set model.dense_dim to one")


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 (round to nearest even) as uint16 bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def int8_scale(sample: np.ndarray, quantile: float = CLIP_QUANTILE) -> float:
    """The int8 scale for vectors like ``sample``: ``quantile`` of their absolute values map to 127."""
    values = np.abs(np.asarray(sample, dtype=np.float32)).ravel()
    if not values.size:
        raise ValueError("cannot calibrate int8 on an empty sample")
    top = float(np.quantile(values, quantile))
    if not np.isfinite(top) or top <= 0:
        raise ValueError("cannot calibrate int8: the sample's values are all zero or not finite")
    return 127.0 / top


def to_int8(x: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * scale), -127, 127).astype(np.int8)


def to_binary(x: np.ndarray) -> np.ndarray:
    """Sign bits (1 where > 0), packed big-endian 8 per byte: what Milvus' BINARY_VECTOR takes."""
    return np.packbits(np.asarray(x) > 0, axis=-1)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def hamming(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Hamming distances between packed bit rows: [queries, docs] int32."""
    out = np.zeros((len(queries), len(docs)), dtype=np.int32)
    for start in range(0, len(queries), 64):
        xor = queries[start:start + 64, None, :] ^ docs[None, :, :]
        out[start:start + 64] = _POPCOUNT[xor].sum(axis=-1)
    return out


def stored(x: np.ndarray, dense_type: str, scale: float | None = None) -> np.ndarray:
    """What the collection holds of float32 vectors ``x`` (for int8, ``scale`` from :func:`int8_scale`)."""
    if dense_type == "float32":
        return np.asarray(x, dtype=np.float32)
    if dense_type == "float16":
        return np.asarray(x, dtype=np.float32).astype(np.float16)
    if dense_type == "bfloat16":
        return to_bfloat16_bits(x)
    if dense_type == "int8":
        if scale is None:
            raise ValueError("int8 needs a calibrated scale")
        return to_int8(x, scale)
    if dense_type == "binary":
        return to_binary(x)
    raise ValueError(f"unknown dense type {dense_type!r}; choose one of {', '.join(DENSE_TYPES)}")


def _as_float(x: np.ndarray, dense_type: str) -> np.ndarray:
    """The float32 values a float type stores of ``x`` (rounded as stored)."""
    if dense_type == "bfloat16":
        return from_bfloat16_bits(to_bfloat16_bits(x))
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32) if dense_type == "float16" \
        else np.asarray(x, dtype=np.float32)


def scores(queries: np.ndarray, docs: np.ndarray, dense_type: str, *, scale: float | None = None,
           rescore_docs: np.ndarray | None = None, k: int = 10) -> np.ndarray:
    """Similarity of float32 ``queries`` to float32 ``docs`` as a collection of ``dense_type`` would rank them
    (higher is better; a FLAT search, no index error).

    Args:
        queries: [q, dim] float32.
        docs: [d, dim] float32 (what the job would have written before conversion).
        dense_type: The stored type.
        scale: int8's calibrated scale.
        rescore_docs: binary only: re-rank the best ``RESCORE_FACTOR * k`` of each query with these
            float32 vectors (a higher-precision copy); candidates beyond keep -inf.
        k: The cut-off the rescoring serves.
    """
    if dense_type in ("float32", "float16", "bfloat16"):
        return _as_float(queries, dense_type) @ _as_float(docs, dense_type).T
    if dense_type == "int8":
        if scale is None:
            raise ValueError("int8 needs a calibrated scale")
        return (to_int8(queries, scale).astype(np.int32) @ to_int8(docs, scale).astype(np.int32).T).astype(np.float32)
    if dense_type == "binary":
        out = -hamming(to_binary(queries), to_binary(docs)).astype(np.float32)
        if rescore_docs is None:
            return out
        depth = min(RESCORE_FACTOR * k, out.shape[1])
        top = np.argpartition(-out, depth - 1, axis=1)[:, :depth]
        rescored = np.full_like(out, -np.inf)
        exact = np.einsum("qd,qkd->qk", np.asarray(queries, np.float32), np.asarray(rescore_docs, np.float32)[top])
        np.put_along_axis(rescored, top, exact, axis=1)
        return rescored
    raise ValueError(f"unknown dense type {dense_type!r}; choose one of {', '.join(DENSE_TYPES)}")


__all__ = ["DENSE_TYPES", "DenseType", "bytes_per_vector", "check_dim", "int8_scale", "stored", "scores",
           "to_binary", "to_int8", "to_bfloat16_bits", "from_bfloat16_bits", "hamming"]
