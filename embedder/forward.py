"""GPU stage: the forward pass of one packed batch, with an fp32 re-run when fp16/bf16 overflows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedder.models.loader import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class ForwardOutput:
    """Raw outputs of one batch, on the CPU as float32."""

    dense: np.ndarray  # [rows, dim], pooled per the model's config
    input_ids: np.ndarray  # [rows, seq], padded with the pad id
    token_weights: np.ndarray | None  # [rows, seq], relu(sparse_linear(h)); None without a sparse head
    reran_fp32: bool = False


class ModelRunner:
    """Runs padded batches through the model; owns the device, dtype and the fp32 fallback copy."""

    def __init__(self, model: LoadedModel, reload_fp32: Callable[[], LoadedModel]) -> None:
        self.m = model
        self.reload_fp32 = reload_fp32  # the original fp32 weights, loaded again only if ever needed
        self.pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        names = getattr(model.tokenizer, "model_input_names", ["input_ids", "attention_mask"])
        self.wants_token_types = "token_type_ids" in names
        self._fp32: tuple[Any, Any] | None = None

    def pad(self, rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad token id rows to the longest; returns (ids, attention mask)."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def forward(self, rows: Sequence[np.ndarray]) -> ForwardOutput:
        """Embed one batch; a batch with a non-finite vector is re-run in fp32."""
        import torch

        ids, mask = self.pad(rows)
        out = self._run(self.m.st, self.m.sparse_head, ids, mask)
        finite = np.isfinite(out.dense).all() and (out.token_weights is None or np.isfinite(out.token_weights).all())
        if self.m.dtype != torch.float32 and not finite:
            log.warning("non-finite vectors in %s; re-running the batch of %d rows in fp32", self.m.dtype, len(rows))
            st32, head32 = self._fp32_copy()
            out = self._run(st32, head32, ids, mask)
            out.reran_fp32 = True
        return out

    def _fp32_copy(self) -> tuple[Any, Any]:
        if self._fp32 is None:
            m32 = self.reload_fp32()
            self._fp32 = (m32.st, m32.sparse_head)
        return self._fp32

    def _run(self, st: Any, head: Any, ids: np.ndarray, mask: np.ndarray) -> ForwardOutput:
        import torch

        device = self.m.device
        features = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
        if self.wants_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        with torch.inference_mode():
            feats = st(features)
            dense = feats["sentence_embedding"].float().cpu().numpy()
            weights = None
            if head is not None:
                weights = torch.relu(head(feats["token_embeddings"])).squeeze(-1)
                weights = (weights * features["attention_mask"]).float().cpu().numpy()
        return ForwardOutput(dense=dense, input_ids=ids, token_weights=weights)
