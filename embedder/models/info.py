"""What the CPU stages need to know about a model without loading its weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.models.source import check_model_folder, resolve_model_path
from embedder.settings import ModelConfig

SPARSE_HEAD_FILE = "sparse_linear.pt"  # BGE-M3's sparse head, next to the model's weights


@dataclass(frozen=True)
class ModelInfo:
    """Prompts, sequence limit and tokenizer of a model, read from its folder."""

    path: str
    tokenizer: Any
    max_seq_length: int
    prompts: dict[str, str]
    dim: int | None  # output dimension per the module configs; None when they don't say
    has_sparse_head: bool

    @property
    def passage_prompt(self) -> str:
        return self.prompts.get("passage") or self.prompts.get("document") or ""

    @property
    def query_prompt(self) -> str:
        return self.prompts.get("query") or ""


def read_model_json(path: str, name: str) -> dict[str, Any]:
    """A JSON file of a local model folder or a cached hub model; {} when absent."""
    local = Path(path) / name
    if not Path(path).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, name)
        local = Path(cached) if isinstance(cached, str) else Path("/nonexistent")
    if not local.exists():
        return {}
    return json.loads(local.read_text(encoding="utf-8"))


def load_model_info(cfg: ModelConfig) -> ModelInfo:
    """Tokenizer plus limits and prompts; cheap enough for every CPU worker (no torch: see fasttok).

    Raises:
        FileNotFoundError: A local folder that is not a model (the message lists what it lacks).
        ValueError: Settings the model cannot honour (e.g. ``max_seq_length`` over its limit).
    """
    from embedder.models.fasttok import FastTokenizer

    path = resolve_model_path(cfg)
    if Path(path).is_dir():
        check_model_folder(Path(path), cfg.name)
    tokenizer: Any = FastTokenizer.load(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer is None:  # no tokenizer.json, or a class that needs transformers (which imports torch)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    st_conf = read_model_json(path, "sentence_bert_config.json")
    model_max = int(st_conf.get("max_seq_length") or min(getattr(tokenizer, "model_max_length", 512), 8192))
    limit = cfg.max_seq_length or model_max
    if limit > model_max:
        raise ValueError(f"model.max_seq_length {limit} exceeds {cfg.name}'s limit {model_max}")
    prompts = read_model_json(path, "config_sentence_transformers.json").get("prompts") or {}
    tokenizer.model_max_length = 1 << 30  # limits are enforced by chunking, not by the tokenizer's warning
    return ModelInfo(path=path, tokenizer=tokenizer, max_seq_length=limit, prompts=dict(prompts),
                     dim=output_dim(path), has_sparse_head=find_sparse_head(path) is not None)


def matryoshka_trained(path: str) -> bool:
    """Whether the model says it was trained for Matryoshka truncation: its model card (README.md) or a config
    mentions it. Neither BGE-M3 nor multilingual-e5 does; such models lose more when cut."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    for name in ("README.md", "config_sentence_transformers.json", "config.json", "modules.json"):
        file = folder / name
        if file.is_file() and "matryoshka" in file.read_text(encoding="utf-8", errors="ignore").lower():
            return True
    return False


def output_dim(path: str) -> int | None:
    """The sentence-embedding size: the last Dense module's out_features, else the Pooling input size."""
    dim = None
    for module in read_model_json(path, "modules.json") or []:
        kind, folder = module.get("type", ""), module.get("path", "")
        conf = read_model_json(path, f"{folder}/config.json") if folder else {}
        if kind.endswith("Pooling"):
            dim = conf.get("word_embedding_dimension", dim)
        elif kind.endswith("Dense"):
            dim = conf.get("out_features", dim)
    if dim is None:
        dim = read_model_json(path, "config.json").get("hidden_size")
    return int(dim) if dim else None


def find_sparse_head(path: str) -> Path | None:
    """The ``sparse_linear.pt`` of a local folder or a cached hub model, if it has one."""
    local = Path(path)
    if local.is_dir():
        head = local / SPARSE_HEAD_FILE
        return head if head.exists() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, SPARSE_HEAD_FILE)
    return Path(cached) if isinstance(cached, str) else None
