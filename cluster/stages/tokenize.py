"""Stage 2 (CPU tasks): documents -> chunks of token ids, one output row per chunk.

Failed documents and shard end markers pass through as single rows with ``error`` /
``_shard_end`` set, so the driver sees every input exactly once.
"""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster import contract as c
from cluster.stages.arrow import is_payload, list_array
from embedder.language import dominant_script
from embedder.models.info import load_model_info
from embedder.settings import ChunkingConfig, ModelConfig
from embedder.tokenize import TextTokenizer

N_CHUNKS = c.N_CHUNKS
_CACHE: dict[bytes, TextTokenizer] = {}  # one tokenizer per worker process and config


def get_tokenizer(model: ModelConfig, chunking: ChunkingConfig) -> TextTokenizer:
    """The tokenizer for this config, loaded once per worker process (Ray reuses workers)."""
    key = pickle.dumps((model, chunking))
    if key not in _CACHE:
        _CACHE[key] = TextTokenizer(load_model_info(model), model, chunking)
    return _CACHE[key]


MAX_ID_BYTES = 500  # Milvus pk/doc_id are VARCHAR(512); the pk adds "#<chunk_index>"


def reject_long_ids(table: pa.Table) -> pa.Table:
    """Mark documents whose id cannot be a Milvus primary key."""
    ids = table.column(c.DOC_ID)
    too_long = pc.fill_null(pc.greater(pc.binary_length(ids), MAX_ID_BYTES), False)
    if not pc.any(too_long).as_py():
        return table
    reason = pa.scalar(f"doc_id longer than {MAX_ID_BYTES} bytes; shorten the ids (Milvus keys are VARCHAR(512))")
    errors = pc.if_else(pc.and_(too_long, pc.is_null(table.column(c.ERROR))), reason, table.column(c.ERROR))
    return table.set_column(table.schema.get_field_index(c.ERROR), c.ERROR, errors)


def tokenize_docs(table: pa.Table, *, model: ModelConfig, chunking: ChunkingConfig,
                  lang_column: str | None = None) -> pa.Table:
    """Add pk, chunk_index, input_ids, n_tokens, n_chunks, truncated; chunk texts replace doc texts."""
    return tokenize_table(table, get_tokenizer(model, chunking), lang_column)[0]


def tokenize_table(table: pa.Table, tok: TextTokenizer, lang_column: str | None = None) -> tuple[pa.Table, np.ndarray]:
    """:func:`tokenize_docs` with a loaded tokenizer; also returns the chunks of each input row (0: none)."""
    c.require_columns("tokenize", table.column_names, c.READ_COLUMNS)
    table = reject_long_ids(table)
    payload = np.flatnonzero(is_payload(table))
    texts = table.column(c.TEXT).to_pylist()
    chunks = tok.passages([texts[i] for i in payload])

    # Output rows: every chunk, plus one row per non-payload input (errors, markers).
    per_doc = np.bincount(np.asarray(chunks.doc, dtype=np.int64), minlength=len(payload))
    per_row = np.zeros(table.num_rows, dtype=np.int32)
    per_row[payload] = per_doc[:len(payload)]
    src = np.concatenate([payload[chunks.doc], np.flatnonzero(~is_payload(table)),
                          payload[list(chunks.errors)]]).astype(np.int64)
    n_chunk_rows = len(chunks.doc)
    text_pos = table.schema.get_field_index(c.TEXT)
    out = table.drop_columns([c.TEXT]).take(pa.array(src))  # never copy a long text once per chunk
    doc_ids = out.column(c.DOC_ID).to_pylist()
    errors = out.column(c.ERROR).to_pylist()
    chunk_index = [None] * len(src)
    pks: list[str | None] = [None] * len(src)
    chunk_texts: list[str | None] = [None] * len(src)
    for k in range(n_chunk_rows):
        d = chunks.doc[k]
        chunk_index[k] = chunks.chunk_index[k]
        pks[k] = c.chunk_pk(doc_ids[k], chunks.chunk_index[k])
        a, b = chunks.spans[k]
        chunk_texts[k] = texts[payload[d]][a:b]
    for j, doc in enumerate(chunks.errors):
        errors[len(src) - len(chunks.errors) + j] = chunks.errors[doc]

    lengths = np.zeros(len(src), dtype=np.int64)
    lengths[:n_chunk_rows] = chunks.lengths
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.concatenate(chunks.input_ids) if chunks.input_ids else np.zeros(0, dtype=np.int32)
    n_chunks = np.zeros(len(src), dtype=np.int32)
    n_chunks[:n_chunk_rows] = per_doc[np.asarray(chunks.doc, dtype=np.int64)]
    valid = np.arange(len(src)) < n_chunk_rows
    langs = table.column(lang_column).to_pylist() if lang_column else None
    doc_lang = [None] * len(src)
    doc_chars = np.zeros(len(src), dtype=np.int64)
    for k in range(n_chunk_rows):
        i = payload[chunks.doc[k]]
        doc_chars[k] = len(texts[i])
        if langs is not None and langs[i] is not None:
            doc_lang[k] = str(langs[i])
        elif chunks.chunk_index[k] == 0 or langs is not None:
            doc_lang[k] = "unknown" if langs is not None else dominant_script(texts[i])
        else:
            doc_lang[k] = doc_lang[k - 1]  # later chunks of the same document follow its first
    out = out.add_column(text_pos, c.TEXT, pa.array(chunk_texts, pa.large_string()).cast(pa.string()))
    out = out.set_column(out.schema.get_field_index(c.ERROR), c.ERROR, pa.array(errors, pa.string()))
    out = (out.append_column(c.PK, pa.array(pks, pa.string()))
           .append_column(c.CHUNK_INDEX, pa.array(chunk_index, pa.int32()))
           .append_column(c.INPUT_IDS, list_array(offsets, ids.astype(np.int32), valid))
           .append_column(c.N_TOKENS, pa.array(lengths.astype(np.int32)))
           .append_column(N_CHUNKS, pa.array(n_chunks))
           .append_column(c.LANG, pa.array(doc_lang, pa.string()))
           .append_column(c.DOC_CHARS, pa.array(doc_chars))
           .append_column(c.AT_LIMIT, pa.array(lengths >= tok.window))
           .append_column(c.TRUNCATED, pa.array(chunks.truncated + [False] * (len(src) - n_chunk_rows), pa.bool_())))
    return out, per_row


__all__ = ["N_CHUNKS", "tokenize_docs", "tokenize_table"]
