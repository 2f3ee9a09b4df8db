"""The encoder in one object: tokenize -> pack by token budget -> forward + vector math -> host.

The steps stay separate callables (``TextTokenizer`` on CPU; ``ModelRunner.launch`` /
``collect`` for the forward pass with the Matryoshka cut and the sparse reduction on the
device, see ``embedder/device_vectors.py``) so that ``cluster/`` can run them in different Ray
stages; ``Encoder`` strings them together for one process (the embed actor, queries,
evaluation, benchmarks), with one batch in flight ahead (``embedder/schedule.py``).

Example:
    >>> enc = Encoder(ModelConfig(name="models/e5"), BatchConfig(), ChunkingConfig())
    >>> chunks, emb = enc.encode_passages(["Der Router startet neu.", "Reboot the router."])
    >>> emb.dense.shape
    (2, 384)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from embedder.forward import ModelRunner, PostSettings
from embedder.models.info import load_model_info
from embedder.models.loader import check_batch_budget, load_model
from embedder.precision import resolve_device, resolve_dtype
from embedder.schedule import Budget, run_batches
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig
from embedder.token_rows import TokenRows
from embedder.tokenize import Chunks, TextTokenizer
from embedder.vectors import SparseBatch

log = logging.getLogger(__name__)


@dataclass
class EncodeStats:
    """Counters of the work done, summed over calls."""

    chunks: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    fp32_reruns: int = 0
    oom_halvings: int = 0

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / padded tokens (1.0 = no padding)."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


@dataclass
class Embeddings:
    """Vectors of a list of chunks, in input order; ``errors`` maps a chunk position to a reason."""

    dense: np.ndarray
    sparse: SparseBatch | None
    widths: np.ndarray  # padded width of the forward batch each row ran in; its own length when packed
    errors: dict[int, str] = field(default_factory=dict)
    fp32_reruns: int = 0  # batches of this call re-run in fp32


class Encoder:
    """Loads the model once and embeds chunks in token-budget batches."""

    def __init__(self, model: ModelConfig, batch: BatchConfig, chunking: ChunkingConfig) -> None:
        self.cfg = model
        self.batch = batch
        self.info = load_model_info(model)
        check_batch_budget(batch.max_tokens, self.info.max_seq_length)
        device = resolve_device(model)
        dtype = resolve_dtype(model.precision, device)
        self.model = load_model(model, self.info, device, dtype)
        self.tokenizer = TextTokenizer(self.info, model, chunking)
        fp32_cfg = dataclasses.replace(model, attention="padded", precision="fp32")
        self.runner = ModelRunner(self.model, PostSettings(model.dense_dim, model.normalize, model.sparse_top_k),
                                  reload_fp32=lambda: load_model(fp32_cfg, self.info, device, _fp32()))
        self.budget = Budget(batch.max_tokens, batch.max_rows)
        self.stats = EncodeStats()
        log.info("loaded %s on %s as %s (dim %d, sparse %s)", model.name, device, dtype, self.model.dim,
                 self.model.sparse_head is not None)

    @property
    def dim(self) -> int:
        """Dimension of the stored dense vectors (after Matryoshka truncation)."""
        return self.cfg.dense_dim or self.model.dim

    @property
    def has_sparse(self) -> bool:
        return self.model.sparse_head is not None

    @property
    def unpadded(self) -> bool:
        """True when batches are packed without padding (``widths`` are then each row's own length)."""
        return self.runner.unpadded

    def embed_ids(self, input_ids: list[np.ndarray]) -> Embeddings:
        """Embed tokenized chunks; the output rows follow the input order."""
        return self.embed_rows(TokenRows.from_list(input_ids))

    def embed_rows(self, rows: TokenRows) -> Embeddings:
        """Embed token rows stored flat (as an Arrow list column holds them); output in input order."""
        n = len(rows)
        dense = np.zeros((n, self.dim), dtype=np.float32)
        sparse_parts: list[tuple[np.ndarray, SparseBatch]] = []
        errors: dict[int, str] = {}
        widths = np.zeros(n, dtype=np.int32)
        reruns, halvings = 0, self.budget.halvings
        for batch, res in run_batches(self.runner, rows, self.budget):
            dense[batch] = res.dense
            widths[batch] = res.widths
            if res.sparse is not None:
                sparse_parts.append((batch, res.sparse))
            for r in np.flatnonzero(res.bad):
                errors[int(batch[r])] = "non-finite vector, also in fp32"
            reruns += int(res.reran_fp32)
            self.stats.batches += 1
        lengths = rows.lengths
        self.stats.fp32_reruns += reruns
        self.stats.oom_halvings += self.budget.halvings - halvings
        self.stats.real_tokens += int(lengths.sum())
        self.stats.padded_tokens += int(widths.sum())
        self.stats.chunks += n
        sparse = _scatter(sparse_parts, n) if self.has_sparse else None
        return Embeddings(dense=dense, sparse=sparse, widths=widths, errors=errors, fp32_reruns=reruns)

    def encode_passages(self, texts: list[str]) -> tuple[Chunks, Embeddings]:
        """Documents -> chunks -> vectors."""
        chunks = self.tokenizer.passages(texts)
        return chunks, self.embed_ids(chunks.input_ids)

    def encode_queries(self, texts: list[str]) -> Embeddings:
        """Queries (query prefix or instruction applied), one vector each."""
        return self.embed_ids(self.tokenizer.queries(texts).input_ids)


def _fp32():  # noqa: ANN202 - torch.dtype, imported lazily
    import torch

    return torch.float32


def _scatter(parts: list[tuple[np.ndarray, SparseBatch]], n: int) -> SparseBatch:
    """Reassemble per-batch sparse rows into input order."""
    if not parts:
        return SparseBatch(np.zeros(n + 1, dtype=np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    positions = np.concatenate([rows for rows, _ in parts])
    counts = np.concatenate([np.diff(p.offsets) for _, p in parts])
    merged = SparseBatch(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                         np.concatenate([p.indices for _, p in parts]),
                         np.concatenate([p.values for _, p in parts]))
    order = np.empty(n, dtype=np.int64)
    order[positions] = np.arange(len(positions))
    return merged.take(order)
