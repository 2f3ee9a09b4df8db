"""The batch contract: the columns each pipeline stage reads and adds.

Stages exchange ``pyarrow.Table`` batches. A row whose ``error`` is set is carried to the
end (never dropped) and reported in the dead-letter output instead of being written.
"""

from __future__ import annotations

# Added by the source reader (one row per document).
DOC_ID = "doc_id"
TEXT = "text"
SHARD = "_shard"  # path of the shard the row came from
ROW = "_row"  # row number inside that shard
ERROR = "error"  # null, or why the row cannot be embedded

# Added by the tokenize stage (one row per chunk).
PK = "pk"  # f"{doc_id}#{chunk_index}"
CHUNK_INDEX = "chunk_index"
INPUT_IDS = "input_ids"  # list<int32>, special tokens and prefix included
N_TOKENS = "n_tokens"
TRUNCATED = "truncated"  # the document was cut by chunking.long_docs=truncate
LANG = "_lang"  # the document's language (source.lang_column) or dominant script, for statistics
DOC_CHARS = "_doc_chars"  # characters of the whole document
AT_LIMIT = "_at_limit"  # the chunk is a full window: its document was longer than the limit

# Added by the embed stage (input_ids removed).
DENSE = "dense"  # list<float32>, length model.dense_dim
SPARSE_INDICES = "sparse_indices"  # list<int32>: token ids, ascending
SPARSE_VALUES = "sparse_values"  # list<float32>: max relu weight per token id

READ_COLUMNS = (DOC_ID, TEXT, SHARD, ROW, ERROR)
TOKENIZED_COLUMNS = (PK, DOC_ID, CHUNK_INDEX, TEXT, INPUT_IDS, N_TOKENS, TRUNCATED, SHARD, ROW, ERROR)
EMBEDDED_COLUMNS = (PK, DOC_ID, CHUNK_INDEX, TEXT, N_TOKENS, DENSE, SPARSE_INDICES, SPARSE_VALUES, SHARD, ROW, ERROR)


def require_columns(stage: str, present: list[str] | tuple[str, ...], needed: tuple[str, ...]) -> None:
    """Raise a KeyError naming the stage and the missing columns."""
    missing = [c for c in needed if c not in present]
    if missing:
        raise KeyError(f"{stage}: batch is missing column(s) {missing}; it has {list(present)}")


def make_pk(doc_id: str, chunk_index: int) -> str:
    """The Milvus primary key of a chunk: deterministic, so re-runs upsert instead of duplicating."""
    return f"{doc_id}#{chunk_index}"
