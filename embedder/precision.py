"""Choose the device and the dtype of the forward pass."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from embedder.settings import ModelConfig

if TYPE_CHECKING:
    import torch


def resolve_device(cfg: ModelConfig) -> str:
    """``cuda`` when asked for or visible (auto), else ``cpu``; asking for CUDA without one is an error."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is cuda but no GPU is visible to this process; "
                           "request GPUs with cluster.gpus_per_worker or set model.device: cpu")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 beats fp32 about 2x.

    ``cpuinfo`` is where the CPU flags are read from (another file in tests)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    """auto: fp16 on CUDA; on CPU bf16 where native, else fp32 (fp16 on CPU is several times slower).

    int8: the weights are loaded as fp32 and their Linear layers quantized after loading
    (:func:`quantize_int8`); CPU only."""
    import torch

    if precision == "int8":
        if not device.startswith("cpu"):
            raise ValueError("model.precision int8 runs on CPUs only (dynamic int8 quantization); on a GPU use auto "
                             "(fp16)")
        return torch.float32
    if precision == "auto":
        if device.startswith("cuda"):
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def quantize_int8(module: torch.nn.Module) -> int:
    """Replace the Linear layers of ``module`` by dynamically quantized int8 ones (weights int8 per tensor,
    activations quantized per batch); returns how many were replaced."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    before = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear))
    quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return before


def is_out_of_memory(exc: BaseException) -> bool:
    """A device (``torch.OutOfMemoryError``) or host (CPU allocator) allocation failure."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached_memory(device: str) -> None:
    """Hand the CUDA caching allocator's free blocks back after an out-of-memory (no-op on CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
