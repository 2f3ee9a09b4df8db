"""Settings of the encoder: which model, how it is run, how texts are batched and chunked.

Each field's ``doc`` metadata is the user-facing documentation; ``jobs/config.py``
reads it to validate YAML and to print ``python -m jobs.embed --help-config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
LongDocPolicy = Literal["chunk", "truncate", "error"]


def doc(text: str, default: object = None, *, default_factory: object = None, secret: bool = False,
        required: bool = False) -> object:
    """A dataclass field with user-facing documentation; ``secret`` keeps it out of ``repr``."""
    if required:
        return field(metadata={"doc": text}, repr=not secret)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"doc": text}, repr=not secret)  # type: ignore[arg-type]
    return field(default=default, metadata={"doc": text}, repr=not secret)


def choice(name: str, value: object, valid: tuple[object, ...]) -> None:
    """Raise a ValueError naming the valid choices when ``value`` is not one of them."""
    if value not in valid:
        raise ValueError(f"{name}: {value!r} is not valid; choose one of {', '.join(map(repr, valid))}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The embedding model and how it runs."""

    name: str = doc("Hugging Face model id, local model folder, or s3://bucket/prefix of a model folder.",
                    required=True)
    dense_dim: int | None = doc("Matryoshka dimension: the dense vector is cut to this size and re-normalized. "
                                "Empty = the model's full dimension.")
    sparse: bool | Literal["auto"] = doc("BGE-M3 lexical weights from sparse_linear.pt: auto (when the head exists), "
                                         "true (required), false (off).", "auto")
    sparse_top_k: int | None = doc("Keep only the K largest sparse weights per chunk. Empty = keep all.")
    precision: Precision = doc("auto (fp16 on CUDA; bf16 on CPUs with native bf16, else fp32), fp32, fp16, bf16, "
                               "or int8 (CPU only, opt-in, never chosen by auto: the Linear layers dynamically "
                               "quantized to int8; other rows than fp32's, so audit it with jobs.evaluate).",
                               "auto")
    device: Literal["auto", "cpu", "cuda"] = doc("Where the forward pass runs; auto = CUDA when visible.", "auto")
    attention: Literal["auto", "padded", "unpadded"] = doc(
        "auto: packed batches without padding where this process can run them (flash-attn, or torch's varlen "
        "flash kernel, on CUDA in fp16/bf16; on CPU only the attention product is padded, per group of "
        "similar-length sequences), else padded SDPA. padded: always pad. unpadded: pack, and fail at start-up "
        "where that is not available.", "auto")
    cpu_threads: int | None = doc("Torch threads of an embed actor whose forward pass runs on CPU. Empty = every "
                                  "core the actor's process may use (Ray's OMP_NUM_THREADS, i.e. "
                                  "cluster.cpus_per_worker, is not used: run one embed actor per CPU node).")
    passage_prefix: str | None = doc("Prefix for documents. Empty = the model's own 'passage'/'document' prompt, "
                                     "if any.")
    query_prefix: str | None = doc("Prefix for queries. Empty = the model's own 'query' prompt, if any.")
    query_instruction: str | None = doc("Task description for instruction-tuned models; queries become "
                                        "instruction_template with {task} and {text} filled in.")
    instruction_template: str = doc("Template used with query_instruction.", "Instruct: {task}\nQuery: {text}")
    max_seq_length: int | None = doc("Longest token sequence fed to the model. Empty = the model's own limit.")
    normalize: bool = doc("L2-normalize dense vectors (needed for inner-product search).", True)
    cache_dir: str = doc("Local cache for models downloaded from s3:// (one download per node).",
                         "~/.cache/multilingual-embed/models")
    storage_options: dict[str, object] = doc("s3fs options for an s3:// model (endpoint_url, key, secret).",
                                              default_factory=dict, secret=True)
    trust_remote_code: bool = doc("Allow custom model code from the model folder.", False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model.name is required: a Hugging Face id, a local folder or an s3:// prefix")
        choice("model.precision", self.precision, ("auto", "fp32", "fp16", "bf16", "int8"))
        choice("model.device", self.device, ("auto", "cpu", "cuda"))
        choice("model.sparse", self.sparse, ("auto", True, False))
        choice("model.attention", self.attention, ("auto", "padded", "unpadded"))
        for key in ("dense_dim", "sparse_top_k", "max_seq_length", "cpu_threads"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"model.{key} must be a positive integer or empty, got {value!r}")
        if self.query_instruction and "{text}" not in self.instruction_template:
            raise ValueError("model.instruction_template must contain {text}")


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """How chunks are packed into forward passes."""

    max_tokens: int = doc("Token budget of one forward pass: rows x longest row for padded batches, real tokens "
                          "for packed (unpadded) ones. Halved for the rest of an actor's life when a batch runs "
                          "out of device memory.", 16384)
    max_rows: int = doc("Upper bound on rows in one forward pass.", 256)

    def __post_init__(self) -> None:
        if self.max_tokens <= 0 or self.max_rows <= 0:
            raise ValueError("batch.max_tokens and batch.max_rows must be positive")


@dataclass(frozen=True, kw_only=True)
class ChunkingConfig:
    """How documents longer than the model's limit are handled."""

    long_docs: LongDocPolicy = doc("chunk (split into windows), truncate (keep the first window, counted), "
                                   "error (report the document as failed).", "chunk")
    chunk_tokens: int | None = doc("Window size in tokens, special tokens and prefix included. "
                                   "Empty = model.max_seq_length.")
    overlap: int = doc("Tokens shared by consecutive windows.", 32)

    def __post_init__(self) -> None:
        choice("chunking.long_docs", self.long_docs, ("chunk", "truncate", "error"))
        if self.overlap < 0:
            raise ValueError("chunking.overlap must be >= 0")
        if self.chunk_tokens is not None and self.chunk_tokens <= self.overlap:
            raise ValueError("chunking.chunk_tokens must be larger than chunking.overlap")
