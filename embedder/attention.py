"""Unpadded (packed) attention: which implementation this process can run, chosen once at load.

A packed batch is every sequence concatenated into one row of ``tokens`` positions, with
``cu_seq_lens`` marking where each sequence starts; attention must stay within a sequence.
In order of preference:

* ``flash_attention_2``: transformers' own varlen path, when the ``flash-attn`` package is
  installed (CUDA, fp16/bf16).
* ``torch_varlen`` (registered here with transformers' ``AttentionInterface``): on CUDA,
  PyTorch's built-in varlen flash-attention kernel (``aten::_flash_attention_forward``, the
  kernel behind nested-tensor SDPA), so no extra package is needed; probed once at start-up
  and dropped if it fails or disagrees with SDPA. On CPU, the projections and feed-forward
  run on real tokens only and just the attention product is padded, per group of
  similar-length sequences (see ``_padded_attention`` and docs/embed-stage.md).
* otherwise ``sdpa`` on padded batches.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

VARLEN = "torch_varlen"
MODES = ("auto", "padded", "unpadded")


@dataclass(frozen=True)
class AttentionChoice:
    """How batches run: ``unpadded`` with ``implementation``, or padded with SDPA."""

    implementation: str
    unpadded: bool
    reason: str


def choose_attention(mode: str, device: str, dtype: Any, hf_model: Any, *, chain_ok: bool) -> AttentionChoice:
    """Pick the attention for ``hf_model`` on ``device``/``dtype`` per ``model.attention`` (auto/padded/unpadded).

    Raises:
        ValueError: ``mode`` is ``unpadded`` but this process cannot run packed batches (the message says why).
    """
    if mode not in MODES:
        raise ValueError(f"model.attention: {mode!r} is not valid; choose one of {', '.join(map(repr, MODES))}")
    if mode == "padded":
        return AttentionChoice("sdpa", False, "model.attention is padded")
    impl, why_not = _unpadded_implementation(device, dtype, hf_model, chain_ok=chain_ok)
    if impl is None:
        if mode == "unpadded":
            raise ValueError(f"model.attention is unpadded but {why_not}; use auto or padded")
        return AttentionChoice("sdpa", False, why_not)
    return AttentionChoice(impl, True, "packed batches, no padding")


def _unpadded_implementation(device: str, dtype: Any, hf_model: Any, *, chain_ok: bool) -> tuple[str | None, str]:
    import inspect

    import torch

    if not chain_ok:
        return None, "the model's module chain does not start with a plain transformer (packing needs it)"
    if not getattr(hf_model, "_supports_attention_backend", False):
        return None, f"{type(hf_model).__name__} does not pass sequence boundaries to its attention"
    if "position_ids" not in inspect.signature(hf_model.forward).parameters:
        return None, f"{type(hf_model).__name__} takes no position_ids"
    if not device.startswith("cuda"):
        return VARLEN, ""
    if dtype not in (torch.float16, torch.bfloat16):
        return None, f"varlen flash attention needs fp16/bf16 on CUDA, not {dtype}"
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        return "flash_attention_2", ""
    failure = probe_varlen(device, dtype)
    if failure:
        return None, f"flash-attn is not installed and torch's varlen kernel failed its probe ({failure})"
    return VARLEN, ""


def enable(hf_model: Any, choice: AttentionChoice) -> None:
    """Switch ``hf_model`` to the chosen implementation (registering ``torch_varlen`` first)."""
    if not choice.unpadded:
        return
    if choice.implementation == VARLEN:
        register()
    hf_model.set_attn_implementation(choice.implementation)


def register() -> None:
    """Make ``torch_varlen`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, flash_attention_mask)  # no mask at all for a packed batch


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                     dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention-interface function over a packed batch ``[1, heads, tokens, head_dim]``.

    Needs ``cu_seq_lens_q`` (int32 ``[sequences + 1]``) and ``max_length_q`` in ``kwargs``, as
    transformers passes them to ``flash_attention_2``. Returns ``[1, tokens, heads, head_dim]``.
    """
    import torch

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or attention_mask is not None or query.shape[0] != 1:
        raise ValueError("torch_varlen attention runs packed batches only (cu_seq_lens_q, no attention mask)")
    q, k, v = (t.transpose(1, 2)[0] for t in (query, key, value))  # [tokens, heads, head_dim]
    max_len = int(kwargs["max_length_q"])
    if q.is_cuda:
        out = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, False, False,
                                                      scale=scaling)[0]
    else:
        out = _padded_attention(q, k, v, cu, scaling)
    return out.unsqueeze(0), None


GROUP = 16  # sequences per padded attention call on CPU


def _padded_attention(q: Any, k: Any, v: Any, cu: Any, scaling: float | None) -> Any:
    """CPU: the attention product of a packed batch, over groups of similar-length sequences padded per group.

    Everything else in the layer (the projections and the feed-forward, most of the work for
    short texts) runs on real tokens only; the attention product is padded, but only to the
    longest sequence of each group of ``GROUP`` sequences taken longest first, so its padding
    stays small even when a batch spans 20 to 500 tokens. A call per sequence would be
    slower (measured on this project's 2-core CPU: per-sequence bf16 SDPA calls were 4x slower
    than a whole padded layer). ``[tokens, heads, head_dim]`` in and out.
    """
    import torch

    out = torch.empty_like(q)
    heads, dim = q.shape[1], q.shape[2]
    for tokens, slot, rows, width, keep in _group_layout(tuple(cu.tolist())):
        padded = [_pad(t[tokens], slot, rows, width) for t in (q, k, v)]
        res = torch.nn.functional.scaled_dot_product_attention(*padded, attn_mask=keep, scale=scaling)
        out.index_copy_(0, tokens, res.transpose(1, 2).reshape(rows * width, heads, dim)[slot])
    return out


def _pad(t: Any, slot: Any, rows: int, width: int) -> Any:
    """``[group tokens, heads, dim]`` -> ``[rows, heads, width, dim]``, zeros where a row is shorter."""
    heads, dim = t.shape[1], t.shape[2]
    return t.new_zeros(rows * width, heads, dim).index_copy_(0, slot, t).view(rows, width, heads, dim).transpose(1, 2)


@functools.lru_cache(maxsize=1)  # the same for every layer of a forward pass
def _group_layout(bounds: tuple[int, ...]) -> list[tuple[Any, Any, int, int, Any]]:
    """Per group: its token indices, their padded slots, rows, width, key mask (None when all equal)."""
    import numpy as np
    import torch

    cu = np.asarray(bounds, dtype=np.int64)
    lengths = np.diff(cu)
    order = np.argsort(-lengths, kind="stable")
    groups = []
    for g in range(0, len(order), GROUP):
        seqs = order[g : g + GROUP]
        lens = lengths[seqs]
        width = int(lens.max())
        row = np.repeat(np.arange(len(seqs)), lens)
        col = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        tokens = np.repeat(cu[seqs], lens) + col
        keep = None
        if (lens != width).any():
            keep = torch.from_numpy(np.arange(width)[None, :] < lens[:, None])[:, None, None, :]
        groups.append((torch.from_numpy(tokens), torch.from_numpy(row * width + col), len(seqs), width, keep))
    return groups


def probe_varlen(device: str, dtype: Any) -> str:
    """Run ``varlen_attention`` on a small packed input; '' when it matches per-sequence SDPA, else why not."""
    import torch

    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, 4, 40, 64, generator=g).to(device=device, dtype=dtype) for _ in range(3))
        cu = torch.tensor([0, 7, 40], dtype=torch.int32, device=device)
        out = varlen_attention(None, q, k, v, None, scaling=0.125, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                               max_length_q=33, max_length_k=33)[0]
        for a, b in ((0, 7), (7, 40)):
            ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                                                   scale=0.125)
            err = (out[0, a:b].float() - ref[0].transpose(0, 1).float()).abs().max().item()
            if not err <= 2e-2:
                return f"differs from SDPA by {err:.3g}"
    except Exception as e:  # any failure means: not usable in this process, use padded batches
        return f"{type(e).__name__}: {e}"
    return ""
