"""The batch contract: every column name the stages exchange, and the collection's field names.

Stages exchange ``pyarrow.Table`` batches. A row whose ``error`` is set is carried to the
end (never dropped) and reported in the dead-letter output instead of being written. Column
names live here and nowhere else.
"""

from __future__ import annotations

import hashlib

# Added by the source reader (one row per document).
DOC_ID = "doc_id"
TEXT = "text"
SHARD = "_shard"  # path of the shard the row came from
ROW = "_row"  # row number inside that shard
ERROR = "error"  # null, or why the row cannot be embedded
SHARD_END = "_shard_end"  # non-null only on a shard's end marker row: documents the shard held
PREV_CHUNKS = "_prev_chunks"  # chunks the document had when its shard was last recorded (null: unknown)
EMBED_FP = "embed_fp"  # the document's fingerprint, chunks and tokens (embedder.models.fingerprint.fingerprint_text)
SHARD_INFO = "_shard_info"  # on a shard's end marker only: JSON with duplicate ids, id kinds, the id file

# Added by the tokenize step (one row per chunk).
PK = "pk"  # chunk_pk(doc_id, chunk_index)
CHUNK_INDEX = "chunk_index"
N_CHUNKS = "n_chunks"  # chunks the chunk's document was split into
INPUT_IDS = "input_ids"  # list<int32>, special tokens and prefix included
N_TOKENS = "n_tokens"
TRUNCATED = "truncated"  # the document was cut by chunking.long_docs=truncate
LANG = "_lang"  # the document's language (source.lang_column) or dominant script, for statistics
DOC_CHARS = "_doc_chars"  # characters of the whole document
AT_LIMIT = "_at_limit"  # the chunk is a full window: its document was longer than the limit

# Added by the embed stage (input_ids removed).
DENSE = "dense"  # fixed_size_list<float32>[model.dense_dim]
SPARSE_INDICES = "sparse_indices"  # list<int32>: token ids, ascending
SPARSE_VALUES = "sparse_values"  # list<float32>: max relu weight per token id
PADDED_LEN = "padded_len"  # width of the forward batch the row ran in: sum = padded tokens
FP32_RERUNS = "_fp32_reruns"  # int32: on the first row of an embed call's output, batches it re-ran in fp32; else 0

VARCHAR_MAX_BYTES = 65535  # the most a Milvus VARCHAR field holds (metadata fields are created at this length)

# Fields of the Milvus collection that are not batch columns of the same name.
SPARSE_FIELD = "sparse"

READ_COLUMNS = (DOC_ID, TEXT, SHARD, ROW, ERROR)
TOKENIZED_COLUMNS = (PK, DOC_ID, CHUNK_INDEX, TEXT, INPUT_IDS, N_TOKENS, TRUNCATED, SHARD, ROW, ERROR)
EMBEDDED_COLUMNS = (PK, DOC_ID, CHUNK_INDEX, TEXT, N_TOKENS, DENSE, SPARSE_INDICES, SPARSE_VALUES, SHARD, ROW, ERROR)
# Names a metadata column may not take (they are batch columns or collection fields).
RESERVED = frozenset({EMBED_FP,
                      DOC_ID, TEXT, SHARD, ROW, ERROR, SHARD_END, SHARD_INFO, PREV_CHUNKS, PK, CHUNK_INDEX, N_CHUNKS,
                      INPUT_IDS, N_TOKENS, TRUNCATED, LANG, DOC_CHARS, AT_LIMIT, DENSE, SPARSE_INDICES, SPARSE_VALUES,
                      PADDED_LEN, FP32_RERUNS, SPARSE_FIELD})


def require_columns(stage: str, present: list[str] | tuple[str, ...], needed: tuple[str, ...]) -> None:
    """Raise a KeyError naming the stage and the missing columns."""
    missing = [c for c in needed if c not in present]
    if missing:
        raise KeyError(f"{stage}: batch is missing column(s) {missing}; it has {list(present)}")


def doc_key(doc_id: str) -> str:
    """32 hex digits naming a document in primary keys: BLAKE2b-128 of its id's UTF-8 bytes.

    Primary keys never hold the id itself, so that deleting or fetching rows by key never puts
    user text into a Milvus expression (pymilvus builds ``pk in [...]`` without escaping).
    """
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=16).hexdigest()


def chunk_pk(doc_id: str, chunk_index: int) -> str:
    """The Milvus primary key of a chunk: deterministic, so re-runs upsert instead of duplicating."""
    return f"{doc_key(doc_id)}#{chunk_index}"


def chunk_pks(doc_id: str, start: int, stop: int) -> list[str]:
    """Keys of chunks ``start .. stop-1`` of a document."""
    key = doc_key(doc_id)
    return [f"{key}#{i}" for i in range(start, stop)]
