"""What ``jobs.plan`` assumes: throughput per device, vector and index sizes, bulk-import files.

Every figure that is not measured in this repository is an assumption stated here, in one
place, so that a measurement replaces it by editing a line: :data:`MEASURED` holds tokens/s
measured by ``benchmarks/`` (see benchmarks/RESULTS.md), :data:`GPUS` the vendors' peak dense
fp16/bf16 tensor throughput, :data:`MFU` the share of that peak assumed to be reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Peak dense fp16/bf16 tensor-core TFLOPS (vendor datasheets, without structured sparsity).
GPUS: dict[str, float] = {"H200": 989.0, "H100 SXM": 989.0, "A100 80GB": 312.0, "L4": 121.0}

#: Assumed model-FLOPs utilisation of the forward pass (packed fp16 batches of <= 512 tokens):
#: large encoders fill the tensor cores, small ones are bound by memory and kernel launches.
MFU: dict[str, float] = {"large": 0.35, "small": 0.15}
LARGE_HIDDEN = 768  # hidden size from which an encoder counts as large


@dataclass(frozen=True)
class Shape:
    """An encoder's size, from its config.json (no weights needed)."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int

    @property
    def params(self) -> int:
        """All parameters (embeddings included), as a BERT/XLM-R encoder has them."""
        return self.layers * self.layer_params + self.vocab * self.hidden

    @property
    def layer_params(self) -> int:
        h, i = self.hidden, self.intermediate
        return 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h  # attention, feed-forward, two layer norms

    def flops_per_token(self, mean_len: float) -> float:
        """Forward FLOPs per token: 2 per weight of the layers (embeddings are a lookup) plus attention
        (QK^T and AV: 4 * hidden per position attended, per layer), at a token-weighted mean length."""
        return 2.0 * self.layers * self.layer_params + 4.0 * self.layers * self.hidden * mean_len

    @property
    def size_class(self) -> str:
        return "large" if self.hidden >= LARGE_HIDDEN else "small"

    def key(self) -> tuple[int, int, int]:
        return self.hidden, self.layers, self.intermediate


#: Reference shapes: BGE-M3 (XLM-R large, 568M parameters) and multilingual-e5-small (118M).
BGE_M3 = Shape("BGE-M3 size (XLM-R large)", 1024, 24, 4096, 250002)
E5_SMALL = Shape("e5-small size", 384, 12, 1536, 250037)

#: Tokens/s measured by the benchmarks of this repository, per device and model shape.
MEASURED: list[dict[str, Any]] = [
    {"device": "CPU: 2 cores, bf16 (dev machine)", "shape": E5_SMALL.key(), "tokens_per_s": 4220.0,
     "source": "benchmarks/pipeline.py, the job's steady rate, 2026-12-01 (RESULTS.md)"},
]


def shape_of(config: dict[str, Any], name: str) -> Shape | None:
    """The encoder shape of a model's config.json, or None when it does not say."""
    try:
        return Shape(name, int(config["hidden_size"]), int(config["num_hidden_layers"]),
                     int(config.get("intermediate_size") or 4 * int(config["hidden_size"])),
                     int(config.get("vocab_size") or 0))
    except (KeyError, TypeError, ValueError):
        return None


def throughput(shape: Shape, mean_len: float) -> list[dict[str, Any]]:
    """Tokens/s per device for ``shape``: measured where :data:`MEASURED` has the shape, else assumed."""
    rows = []
    flops = shape.flops_per_token(mean_len)
    for m in MEASURED:
        if tuple(m["shape"]) == shape.key():
            rows.append({"device": m["device"], "tokens_per_s": m["tokens_per_s"], "basis": "measured",
                         "how": m["source"]})
    measured = {r["device"] for r in rows}
    mfu = MFU[shape.size_class]
    for gpu, tflops in GPUS.items():
        if gpu in measured:
            continue
        rows.append({"device": gpu, "tokens_per_s": tflops * 1e12 * mfu / flops, "basis": "assumed",
                     "how": f"{tflops:g} TFLOPS peak x MFU {mfu} / {flops / 1e6:.0f} MFLOPs per token"})
    if not any(r["device"].startswith("CPU") for r in rows):  # scale the measured CPU figure by FLOPs
        for m in MEASURED:
            ref = next((s for s in (BGE_M3, E5_SMALL) if s.key() == tuple(m["shape"])), None)
            if ref is not None and m["device"].startswith("CPU"):
                rows.append({"device": m["device"], "basis": "assumed",
                             "tokens_per_s": m["tokens_per_s"] * ref.flops_per_token(mean_len) / flops,
                             "how": f"the measured {ref.name} figure scaled by FLOPs per token"})
    return rows


# ---- storage ------------------------------------------------------------------------------------------
def dense_bytes(dim: int) -> dict[str, float]:
    """Bytes of one dense vector per storage type."""
    return {"float32": 4.0 * dim, "float16": 2.0 * dim, "bfloat16": 2.0 * dim, "int8": 1.0 * dim,
            "binary": math.ceil(dim / 8)}


HNSW_M = 16  # the job's HNSW index (cluster.milvus.dense_types.HNSW_PARAMS)
SPARSE_NONZERO_BYTES = 8  # a uint32 token id and a float32 weight
IVF_ID_BYTES = 8  # the int64 row offset kept per vector in IVF lists


def index_memory(vectors: float, vector_bytes: float, m: int = HNSW_M) -> dict[str, float]:
    """Bytes of Milvus index memory: HNSW keeps the vectors and about 2*M int32 links per vector on
    layer 0; IVF_FLAT keeps the vectors and an id each in its lists."""
    return {"HNSW": vectors * (vector_bytes + m * 2 * 4), "IVF_FLAT": vectors * (vector_bytes + IVF_ID_BYTES)}


def import_files(chunks: float, row_bytes: float, shards: int, *, group_shards: int, file_mb: int, writers: int,
                 rows_per_task: int) -> dict[str, Any]:
    """Import files and jobs of a bulk_import run.

    Every ``group_shards`` shards form a group; each writer that receives rows of a group writes its
    own files of it, rolled at ``file_mb``; a group's files go into jobs of at most 1024.
    """
    from cluster.bulkimport import MAX_FILES_PER_JOB

    groups = max(1, math.ceil(shards / group_shards)) if shards else 0
    if not groups:
        return {"groups": 0, "files": 0, "jobs": 0, "bytes": 0.0}
    per_group_chunks = chunks / groups
    per_group_bytes = per_group_chunks * row_bytes
    active = max(1, min(writers, math.ceil(per_group_chunks / max(rows_per_task, 1))))
    per_writer = per_group_bytes / active
    files_per_group = active * max(1, math.ceil(per_writer / (file_mb << 20)))
    return {"groups": groups, "files": groups * files_per_group, "files_per_group": files_per_group,
            "jobs": groups * math.ceil(files_per_group / MAX_FILES_PER_JOB), "bytes": chunks * row_bytes}
