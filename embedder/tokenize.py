"""CPU stage 1: prefix, tokenize and window documents into chunks of token ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedder.chunking import windows
from embedder.models.info import ModelInfo
from embedder.settings import ChunkingConfig, ModelConfig


@dataclass
class Chunks:
    """Chunks of a batch of documents, in document order.

    ``doc[i]`` is the input position of chunk i; documents that failed have no chunk and an
    entry in ``errors`` instead.
    """

    doc: list[int] = field(default_factory=list)
    chunk_index: list[int] = field(default_factory=list)
    input_ids: list[np.ndarray] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # character span of the chunk in the text
    truncated: list[bool] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


class TextTokenizer:
    """Turns texts into model inputs: prefix or instruction, special tokens, length limit.

    Args:
        info: The model's tokenizer, prompts and sequence limit.
        model: Prefix and instruction settings.
        chunking: What to do with documents over the limit.
    """

    def __init__(self, info: ModelInfo, model: ModelConfig, chunking: ChunkingConfig) -> None:
        self.tok = info.tokenizer
        self.max_len = info.max_seq_length
        self.chunking = chunking
        self.passage_prefix = model.passage_prefix if model.passage_prefix is not None else info.passage_prompt
        self.query_prefix = model.query_prefix if model.query_prefix is not None else info.query_prompt
        self.model = model
        self.head, self.tail = self._special_tokens()
        size = chunking.chunk_tokens or self.max_len
        if size > self.max_len:
            raise ValueError(f"chunking.chunk_tokens {size} exceeds model.max_seq_length {self.max_len}")
        self.window = size
        prefix_ids = self.tok(self.passage_prefix, add_special_tokens=False)["input_ids"]
        fixed = len(self.head) + len(self.tail) + len(prefix_ids)
        if fixed >= size:
            raise ValueError(f"chunking.chunk_tokens {size} leaves no room for text after {fixed} special and prefix "
                             "tokens; raise chunk_tokens or shorten the prefix")

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a single sequence."""
        plain = self.tok("x", add_special_tokens=False)["input_ids"]
        full = self.tok("x", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return list(full[:start]), list(full[start + len(plain) :])
        raise ValueError("cannot locate the special tokens of this tokenizer")

    def query_text(self, text: str) -> str:
        """A query as the model expects it: instruction template or query prefix."""
        if self.model.query_instruction:
            return self.model.instruction_template.format(task=self.model.query_instruction, text=text)
        return self.query_prefix + text

    def queries(self, texts: Sequence[str]) -> Chunks:
        """Queries: one chunk each, cut at the model's limit (a query is never split)."""
        policy = ChunkingConfig(long_docs="truncate", overlap=0)
        return self._tokenize([self.query_text(t) for t in texts], prefix_len=0, policy=policy, window=self.max_len)

    def passages(self, texts: Sequence[str]) -> Chunks:
        """Documents: the passage prefix, then windows per ``chunking.long_docs``."""
        prefix = self.passage_prefix
        return self._tokenize([prefix + t for t in texts], prefix_len=len(prefix), policy=self.chunking,
                              window=self.window)

    def _tokenize(self, texts: list[str], prefix_len: int, policy: ChunkingConfig, window: int) -> Chunks:
        if not texts:  # a batch of only rejected rows or shard markers
            return Chunks()
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True,
                       return_attention_mask=False, return_token_type_ids=False)
        head, tail = self.head, self.tail
        budget = window - len(head) - len(tail)
        out = Chunks()
        for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            text_len = len(texts[i]) - prefix_len
            if len(ids) <= budget:
                out.doc.append(i)
                out.chunk_index.append(0)
                out.input_ids.append(np.asarray(head + list(ids) + tail, dtype=np.int32))
                out.spans.append((0, text_len))
                out.truncated.append(False)
                continue
            if policy.long_docs == "error":
                out.errors[i] = (f"document has {len(ids) + len(head) + len(tail)} tokens, over the limit of "
                                 f"{window}; set chunking.long_docs to chunk or truncate")
                continue
            # Tokens that spell the prefix are repeated at the start of every window.
            n_prefix = sum(1 for _, end in offsets if end <= prefix_len) if prefix_len else 0
            prefix_ids, body, body_offsets = list(ids[:n_prefix]), ids[n_prefix:], offsets[n_prefix:]
            size = budget - n_prefix
            if size <= 0:
                raise ValueError(f"a window of {window} tokens leaves no room for text after the {n_prefix}-token "
                                 "prefix; raise chunking.chunk_tokens")
            spans = windows(len(body), size, min(policy.overlap, size - 1))
            if policy.long_docs == "truncate":
                spans = spans[:1]
            for k, (a, b) in enumerate(spans):
                out.doc.append(i)
                out.chunk_index.append(k)
                out.input_ids.append(np.asarray(head + prefix_ids + list(body[a:b]) + tail, dtype=np.int32))
                start = max(0, body_offsets[a][0] - prefix_len)
                end = max(start, body_offsets[b - 1][1] - prefix_len)
                out.spans.append((start, min(end, text_len)))
                out.truncated.append(policy.long_docs == "truncate")
        return out
