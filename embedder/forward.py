"""GPU stage: one batch through the model and the vector math, on the device, results copied back once.

``launch`` builds the batch on the host (vectorized, pinned), queues the copy, the forward pass,
the Matryoshka cut and the sparse reduction on the device, and queues the copy of the final
vectors back, without waiting for any of it; ``collect`` waits for that batch only. So the
caller can launch batch k+1 before collecting batch k, and the device never waits for the host
(on CPU, where torch runs synchronously, the same calls simply run in order).

A batch whose vectors are not finite in fp16/bf16 is re-run in fp32 with a full-precision copy
of the model, loaded the first time it is needed and kept for the rest of the process (logged;
the count is reported as ``fp32_reruns``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedder.device_vectors import DeviceSparse, bad_rows, dense_vectors, sparse_vectors
from embedder.models.loader import LoadedModel
from embedder.token_rows import TokenRows
from embedder.vectors import SparseBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostSettings:
    """What happens to the model's outputs: Matryoshka cut, normalization, sparse top-k."""

    dense_dim: int | None
    normalize: bool
    sparse_top_k: int | None


@dataclass
class BatchResult:
    """Final vectors of one batch, on the host, in the batch's row order."""

    dense: np.ndarray  # float32 [rows, dim]
    sparse: SparseBatch | None
    bad: np.ndarray  # bool [rows]: non-finite (after the fp32 re-run, if there was one)
    widths: np.ndarray  # int32 [rows]: padded width of the batch, or each row's own length when packed
    reran_fp32: bool = False


@dataclass
class InFlight:
    """A launched batch: host-side tensors that fill once ``event`` (CUDA) has passed."""

    rows: TokenRows
    batch: np.ndarray
    dense: Any
    bad: Any
    counts: Any | None
    indices: Any | None
    values: Any | None
    event: Any | None
    widths: np.ndarray


@dataclass
class DeviceOut:
    """Outputs of one batch, still on the device."""

    dense: Any  # float32 [rows, dim]
    bad: Any  # bool [rows]
    sparse: DeviceSparse | None


def position_offset(hf_model: Any) -> int:
    """First position id: padding_idx + 1 for RoBERTa-style learned positions (XLM-R), else 0."""
    import torch

    for module in hf_model.modules():
        pad = getattr(module, "padding_idx", None)
        if isinstance(pad, int) and isinstance(getattr(module, "position_embeddings", None), torch.nn.Embedding):
            return pad + 1
    return 0


class ModelRunner:
    """Runs batches of token rows; owns the device, the dtype and the fp32 fallback copy."""

    def __init__(self, model: LoadedModel, post: PostSettings, reload_fp32: Callable[[], LoadedModel]) -> None:
        import inspect

        import torch

        self.m = model
        self.post = post
        self.reload_fp32 = reload_fp32  # the original fp32 weights, loaded only if a batch ever needs them
        self.unpadded = model.attention.unpadded
        self.device = torch.device(model.device)
        self.cuda = self.device.type == "cuda"
        hf = model.st.transformers_model
        self.position_offset = position_offset(hf)
        self.token_types = "token_type_ids" in inspect.signature(hf.forward).parameters
        # Sparse keys are row * vocab + id: vocab must exceed every id (added tokens included).
        self.vocab = max(int(hf.config.vocab_size), len(model.tokenizer) if model.tokenizer is not None else 0)
        self.drop_ids = torch.tensor(model.special_ids, dtype=torch.int64, device=self.device)
        self._fp32: LoadedModel | None = None

    # ------------------------------------------------------------------ launch / collect

    def launch(self, rows: TokenRows, batch: np.ndarray) -> InFlight:
        """Queue batch ``batch`` (indices into ``rows``) and the copy of its results; does not wait on a GPU."""
        import torch

        with torch.inference_mode():
            out, widths = self._device_pass(self.m, rows, batch, unpadded=self.unpadded)
            return self._to_host(rows, batch, out, widths)

    def collect(self, f: InFlight) -> BatchResult:
        """Wait for a launched batch; re-run it in fp32 if a vector is not finite in half precision."""
        import torch

        result = self._host_result(f)
        if result.bad.any() and self.m.dtype != torch.float32:
            log.warning("non-finite vectors in %s; re-running the batch of %d rows in fp32", self.m.dtype,
                        len(f.batch))
            result = self.run_fp32(f.rows, f.batch)
        return result

    def run_fp32(self, rows: TokenRows, batch: np.ndarray) -> BatchResult:
        """The batch through the full-precision copy (padded), synchronously."""
        import torch

        if self._fp32 is None:
            self._fp32 = self.reload_fp32()
            log.warning("loaded an fp32 copy of the model for re-runs; it stays loaded for the rest of this process")
        with torch.inference_mode():
            out, widths = self._device_pass(self._fp32, rows, batch, unpadded=False)
            f = self._to_host(rows, batch, out, widths)
        result = self._host_result(f)
        result.reran_fp32 = True
        return result

    # ------------------------------------------------------------------ device side

    def _dev(self, a: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.cuda:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _device_pass(self, m: LoadedModel, rows: TokenRows, batch: np.ndarray, *,
                     unpadded: bool) -> tuple[DeviceOut, np.ndarray]:
        """Forward pass plus vector math of one batch, all queued on the device."""
        import torch

        n = len(batch)
        if unpadded:
            p = rows.packed(batch, self.position_offset)
            ids = self._dev(p.ids)
            kwargs: dict[str, Any] = {}
            cu = self._dev(p.cu_seqlens)
            if self.token_types:
                kwargs["token_type_ids"] = torch.zeros_like(ids)[None]
            hidden = m.st.transformers_model(
                input_ids=ids[None], position_ids=self._dev(p.positions)[None], cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                max_length_q=p.max_len, max_length_k=p.max_len, **kwargs).last_hidden_state[0]  # [tokens, hidden]
            width = p.max_len
            slot = self._dev(p.row * width + p.col)
            token_embeddings = hidden.new_zeros(n * width, hidden.shape[-1]).index_copy_(0, slot, hidden)
            mask = torch.zeros(n * width, dtype=torch.int64, device=self.device).index_fill_(0, slot, 1)
            features = {"token_embeddings": token_embeddings.view(n, width, -1), "attention_mask": mask.view(n, width)}
            emb = _run_modules(_modules(m.st)[1:], features)["sentence_embedding"]
            token_hidden, token_ids, token_row = hidden, ids, self._dev(p.row)
            token_valid = torch.ones(len(p.ids), dtype=torch.bool, device=self.device)
            widths = rows.lengths[batch].astype(np.int32)
        else:
            ids_np, mask_np = rows.padded(batch, m.pad_id)
            ids, mask = self._dev(ids_np), self._dev(mask_np)
            features = {"input_ids": ids, "attention_mask": mask}
            if self.token_types:
                features["token_type_ids"] = torch.zeros_like(ids)
            modules = _modules(m.st)
            features = modules[0](features)
            # Pooling multiplies by the mask: an inf at a padding position would make inf x 0 = NaN.
            te = features["token_embeddings"]
            features["token_embeddings"] = torch.where(mask.bool()[..., None], te, 0)
            emb = _run_modules(modules[1:], features)["sentence_embedding"]
            width = ids_np.shape[1]
            token_hidden = features["token_embeddings"].reshape(n * width, -1)
            token_ids, token_valid = ids.view(-1), mask.view(-1).bool()
            token_row = torch.arange(n, device=self.device).repeat_interleave(width)
            widths = np.full(n, width, dtype=np.int32)
        dense = dense_vectors(emb, self.post.dense_dim, normalize=self.post.normalize)
        weights = sparse = None
        if m.sparse_head is not None:
            weights = torch.relu(m.sparse_head(token_hidden)).squeeze(-1)
            sparse = sparse_vectors(token_ids, weights, token_row, token_valid, n, self.drop_ids, self.vocab,
                                    self.post.sparse_top_k)
        bad = bad_rows(emb, weights, token_row, token_valid, n)
        return DeviceOut(dense=dense, bad=bad, sparse=sparse), widths

    def _to_host(self, rows: TokenRows, batch: np.ndarray, out: DeviceOut, widths: np.ndarray) -> InFlight:
        """Queue the copies of the final results to the host; on CUDA they land in pinned memory."""
        import torch

        def host(t: Any) -> Any:
            return t.to("cpu", non_blocking=True) if self.cuda else t

        counts = indices = values = None
        if out.sparse is not None:
            # Every entry comes from a distinct real token: the CSR payload fits in the first real_tokens slots.
            real_tokens = int(rows.lengths[batch].sum())
            bound = real_tokens if self.post.sparse_top_k is None else min(real_tokens,
                                                                             len(batch) * self.post.sparse_top_k)
            bound = min(bound, out.sparse.indices.numel())
            counts, indices, values = (host(out.sparse.counts), host(out.sparse.indices[:bound]),
                                       host(out.sparse.values[:bound]))
        dense, bad = host(out.dense), host(out.bad)
        event = None
        if self.cuda:  # recorded after every copy above: passing it means all of them landed
            event = torch.cuda.Event()
            event.record()
        return InFlight(rows=rows, batch=batch, dense=dense, bad=bad, counts=counts, indices=indices, values=values,
                        event=event, widths=widths)

    @staticmethod
    def _host_result(f: InFlight) -> BatchResult:
        if f.event is not None:
            f.event.synchronize()  # this batch only: later launched batches keep the device busy
        sparse = None
        if f.counts is not None:
            counts = f.counts.numpy()
            total = int(counts.sum())
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            sparse = SparseBatch(offsets, f.indices.numpy()[:total].copy(), f.values.numpy()[:total].copy())
        return BatchResult(dense=f.dense.numpy(), sparse=sparse, bad=f.bad.numpy().copy(), widths=f.widths)


def _modules(st: Any) -> list[Any]:
    return list(st.children())


def _run_modules(modules: list[Any], features: dict[str, Any]) -> dict[str, Any]:
    for module in modules:
        features = module(features)
    return features
