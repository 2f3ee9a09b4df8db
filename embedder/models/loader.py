"""Load a model through sentence-transformers, with its optional BGE-M3 sparse head."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.attention import AttentionChoice, choose_attention, enable
from embedder.models.fasttok import check_same_ids
from embedder.models.info import SPARSE_HEAD_FILE, ModelInfo, find_sparse_head
from embedder.settings import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to run: the sentence-transformers module chain plus what the stages need."""

    st: Any  # sentence_transformers.SentenceTransformer
    tokenizer: Any
    sparse_head: Any | None  # torch.nn.Linear(hidden, 1) or None
    dim: int
    max_seq_length: int
    prompts: dict[str, str]
    special_ids: list[int]
    device: str
    dtype: Any  # torch.dtype
    attention: AttentionChoice = field(default_factory=lambda: AttentionChoice("sdpa", False, "not chosen"))

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0


def transformer_first(st: Any) -> bool:
    """True when the module chain starts with the transformer itself (what packed batches need)."""
    first = next(iter(st.children()), None)
    return first is not None and getattr(first, "model", None) is st.transformers_model


def load_sparse_head(file: Path, hidden: int) -> Any:
    """BGE-M3's ``sparse_linear``: a ``Linear(hidden, 1)`` state dict."""
    import torch

    state = torch.load(file, map_location="cpu", weights_only=True)
    head = torch.nn.Linear(hidden, 1)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{file}: not a Linear({hidden}, 1) state dict as BGE-M3 ships it") from e
    return head.eval()


def load_model(cfg: ModelConfig, info: ModelInfo, device: str, dtype: Any) -> LoadedModel:
    """Load weights once (in an actor's ``__init__``) and check the config against the model."""
    from sentence_transformers import SentenceTransformer

    path = info.path
    st = SentenceTransformer(path, device=device, trust_remote_code=cfg.trust_remote_code)
    st.eval()
    dim = int(st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension")
              else st.get_sentence_embedding_dimension())
    check_dense_dim(cfg, dim)
    st.max_seq_length = info.max_seq_length
    check_same_ids(cfg.name, st.tokenizer, info.tokenizer)  # the read tasks tokenized without transformers

    sparse_head = None
    head_file = find_sparse_head(path) if cfg.sparse is not False else None
    check_sparse(cfg, head_file is not None)
    if head_file is not None:
        hidden = st.transformers_model.config.hidden_size
        sparse_head = load_sparse_head(head_file, hidden).to(device)
    elif cfg.sparse == "auto":
        log.info("model %s has no %s: sparse vectors are off", cfg.name, SPARSE_HEAD_FILE)

    st.to(dtype)
    if sparse_head is not None:
        sparse_head.to(dtype)
    if cfg.precision == "int8":
        import warnings

        from embedder.precision import quantize_int8

        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice, once per load
            warnings.simplefilter("ignore")
            layers = quantize_int8(st)
        log.info("model %s: %d Linear layers quantized to int8 (dynamic)", cfg.name, layers)
    tok = info.tokenizer
    special = {getattr(tok, f"{n}_token_id", None) for n in ("cls", "bos", "eos", "sep", "pad", "unk")}
    loaded = LoadedModel(st=st, tokenizer=tok, sparse_head=sparse_head, dim=dim, max_seq_length=info.max_seq_length,
                         prompts=info.prompts,
                         special_ids=sorted(i for i in special if i is not None), device=device, dtype=dtype)
    return choose_and_enable_attention(loaded, cfg.attention)


def choose_and_enable_attention(model: LoadedModel, mode: str) -> LoadedModel:
    """Pick padded or packed batches for this model here (``model.attention``), switch the model, log it."""
    hf = model.st.transformers_model
    model.attention = choose_attention(mode, model.device, model.dtype, hf, chain_ok=transformer_first(model.st))
    enable(hf, model.attention)
    how = f"unpadded ({model.attention.implementation})" if model.attention.unpadded else "padded (sdpa)"
    log.info("attention: %s on %s %s: %s", how, model.device, model.dtype, model.attention.reason)
    return model


def check_sparse(cfg: ModelConfig, has_head: bool) -> None:
    """``model.sparse: true`` needs the model's sparse head."""
    if cfg.sparse is True and not has_head:
        raise ValueError(f"model.sparse is true but {cfg.name} has no {SPARSE_HEAD_FILE}; "
                         "use a BGE-M3-style model or set model.sparse: auto/false")


def check_batch_budget(max_tokens: int, max_seq_length: int) -> None:
    """One full-length sequence must fit in a forward pass."""
    if max_tokens < max_seq_length:
        raise ValueError(f"batch.max_tokens {max_tokens} is smaller than one full-length sequence "
                         f"({max_seq_length} tokens); raise it")


def check_dense_dim(cfg: ModelConfig, dim: int) -> None:
    """``model.dense_dim`` may only shrink the vector (Matryoshka), never grow it."""
    if cfg.dense_dim is not None and cfg.dense_dim > dim:
        raise ValueError(f"model.dense_dim {cfg.dense_dim} is larger than {cfg.name}'s dimension {dim}; "
                         f"use {dim} or less")
