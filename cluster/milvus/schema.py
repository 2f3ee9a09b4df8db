"""The collection the job writes: its fields, its indexes, and the check of an existing one.

Fields: ``pk`` VARCHAR(512) primary key (:func:`cluster.contract.chunk_pk`: a hash of the document
id, ``#``, the chunk index; auto_id off), ``doc_id``
VARCHAR(512), ``chunk_index`` INT32, ``embed_fp`` VARCHAR(64) (the document's fingerprint, chunk
count and tokens: :func:`embedder.models.fingerprint.fingerprint_text`; absent from collections
made before it existed), ``text`` VARCHAR (when store_text), ``dense`` FLOAT_VECTOR(dense_dim),
``sparse`` SPARSE_FLOAT_VECTOR (when has_sparse), then the metadata fields (nullable).

The collection's properties record the key scheme and the model (:data:`MODEL_PROPERTY`: the
model's fingerprint, dimension and vector type); a run with another model is refused.

Indexes: dense HNSW/IP on milvus-lite (faiss-cpu is a dependency of
milvus-lite 3.x), AUTOINDEX/IP on a server; sparse SPARSE_INVERTED_INDEX/IP; ``doc_id`` INVERTED.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pymilvus import CollectionSchema, DataType, MilvusClient
from pymilvus.milvus_client.index import IndexParams

from cluster import contract as C
from cluster.milvus.connect import is_lite_client
from cluster.milvus.dense_types import FIELD_TYPE
from cluster.milvus.dense_types import index_params as dense_index_params
from cluster.milvus.errors import SchemaMismatchError
from cluster.settings import MilvusConfig

log = logging.getLogger(__name__)

PK_MAX_LENGTH = 512
DOC_ID_MAX_LENGTH = 512
METADATA_VARCHAR_MAX_LENGTH = C.VARCHAR_MAX_BYTES
DENSE = C.DENSE
SPARSE = C.SPARSE_FIELD
# The key scheme is part of the contract with an existing collection: rows written under another
# scheme would be duplicated, never replaced.
KEY_SCHEME = "blake2b128(doc_id)#chunk"
KEY_SCHEME_PROPERTY = "multilingual_embed.key_scheme"  # a collection property (kept by milvus-lite and servers)
MODEL_PROPERTY = "multilingual_embed.model"  # JSON: the model's name, fingerprint, dense dimension and type
FP_MAX_LENGTH = 64
DESCRIPTION = "chunks embedded by multilingual-embed"
SUPPORTED_METADATA = "string, integer (int8..int64, uint8..uint32), floating point, bool"


def milvus_type(column: str, dtype: pa.DataType | DataType) -> DataType:
    """The Milvus type a metadata column is stored as.

    Integers become INT64 and floats DOUBLE whatever their width, so that shards written with
    different physical types (parquet int32 vs JSON int64) map to the same collection. A
    ``pymilvus.DataType`` (VARCHAR, INT64, INT32, DOUBLE, FLOAT, BOOL) is taken as given.

    Raises:
        TypeError: The type has no scalar Milvus counterpart; the message names the column.
    """
    if isinstance(dtype, DataType):
        if dtype in (DataType.VARCHAR, DataType.INT64, DataType.INT32, DataType.DOUBLE, DataType.FLOAT,
                     DataType.BOOL):
            return dtype
    elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return DataType.VARCHAR
    elif pa.types.is_boolean(dtype):
        return DataType.BOOL
    elif pa.types.is_signed_integer(dtype) or (pa.types.is_unsigned_integer(dtype) and dtype.bit_width <= 32):
        return DataType.INT64
    elif pa.types.is_floating(dtype):
        return DataType.DOUBLE
    raise TypeError(f"metadata column {column!r} has type {dtype}, which cannot be stored in Milvus; "
                    f"supported: {SUPPORTED_METADATA}. Cast it in the source or drop it from "
                    "source.metadata_columns")


@dataclass(frozen=True, kw_only=True)
class CollectionSpec:
    """What the job needs from its collection.

    Attributes:
        name: Collection name.
        dense_dim: Dimension of the dense vectors.
        has_sparse: Whether a ``sparse`` field exists.
        store_text: Whether the chunk text is stored in ``text``.
        text_max_length: VARCHAR capacity (bytes) of ``text``; longer texts are cut on write.
        metadata: Metadata columns, as pyarrow types (or pymilvus DataTypes), in field order.
        dense_type: How dense vectors are stored (:mod:`cluster.milvus.dense_types`).
        int8_scale: The int8 quantization scale (dense_type int8), recorded with the model.
        fingerprints: Whether rows carry ``embed_fp`` (false only for a collection made without it).
        model: What the collection's vectors come from (name, fingerprint, dense_dim, dense_type),
            recorded as a property at creation and checked on every later run; None: not checked.
    """

    name: str
    dense_dim: int
    has_sparse: bool
    store_text: bool = True
    text_max_length: int = 65535
    metadata: Mapping[str, pa.DataType | DataType] = field(default_factory=dict)
    fingerprints: bool = True
    model: Mapping[str, Any] | None = None
    dense_type: str = "float32"
    int8_scale: float | None = None

    def __post_init__(self) -> None:
        if self.dense_dim < 1:
            raise ValueError(f"dense_dim must be >= 1, got {self.dense_dim}")
        if not 1 <= self.text_max_length <= 65535:
            raise ValueError(f"milvus.text_max_length must be in 1..65535, got {self.text_max_length}")
        reserved = {C.PK, C.DOC_ID, C.CHUNK_INDEX, C.EMBED_FP, C.TEXT, DENSE, SPARSE}.intersection(self.metadata)
        if reserved:
            raise ValueError(f"metadata columns {sorted(reserved)} are reserved field names; rename them")
        for column, dtype in self.metadata.items():
            milvus_type(column, dtype)  # fail now, naming the column

    @classmethod
    def from_config(cls, cfg: MilvusConfig, *, dense_dim: int, has_sparse: bool,
                    metadata: Mapping[str, pa.DataType | DataType] | None = None) -> CollectionSpec:
        """The spec for ``cfg`` and a model's output (dense_dim, sparse) and the source's metadata types."""
        return cls(name=cfg.collection, dense_dim=dense_dim, has_sparse=has_sparse, store_text=cfg.store_text,
                   text_max_length=cfg.text_max_length, metadata=dict(metadata or {}))

    @property
    def metadata_types(self) -> dict[str, DataType]:
        """Metadata fields and their Milvus types."""
        return {name: milvus_type(name, dtype) for name, dtype in self.metadata.items()}

    @property
    def field_names(self) -> list[str]:
        """Every field of the collection, in order."""
        names = [C.PK, C.DOC_ID, C.CHUNK_INDEX] + ([C.EMBED_FP] if self.fingerprints else [])
        names += ([C.TEXT] if self.store_text else []) + [DENSE]
        return names + ([SPARSE] if self.has_sparse else []) + list(self.metadata)

    @property
    def scalar_fields(self) -> list[str]:
        """Non-vector fields except the primary key (the default search output)."""
        return [n for n in self.field_names if n not in (C.PK, C.EMBED_FP, DENSE, SPARSE)]


def build_schema(spec: CollectionSpec) -> CollectionSchema:
    """The pymilvus schema of ``spec`` (no dynamic field)."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=DESCRIPTION)
    schema.add_field(C.PK, DataType.VARCHAR, is_primary=True, max_length=PK_MAX_LENGTH)
    schema.add_field(C.DOC_ID, DataType.VARCHAR, max_length=DOC_ID_MAX_LENGTH)
    schema.add_field(C.CHUNK_INDEX, DataType.INT32)
    if spec.fingerprints:
        schema.add_field(C.EMBED_FP, DataType.VARCHAR, max_length=FP_MAX_LENGTH)
    if spec.store_text:
        schema.add_field(C.TEXT, DataType.VARCHAR, max_length=spec.text_max_length)
    schema.add_field(DENSE, FIELD_TYPE[spec.dense_type], dim=spec.dense_dim)
    if spec.has_sparse:
        schema.add_field(SPARSE, DataType.SPARSE_FLOAT_VECTOR)
    for name, dtype in spec.metadata_types.items():
        extra = {"max_length": METADATA_VARCHAR_MAX_LENGTH} if dtype == DataType.VARCHAR else {}
        schema.add_field(name, dtype, nullable=True, **extra)
    return schema


def build_index_params(spec: CollectionSpec, *, lite: bool) -> IndexParams:
    """Dense HNSW/IP (milvus-lite) or AUTOINDEX/IP (server); sparse SPARSE_INVERTED_INDEX/IP; doc_id INVERTED."""
    params = MilvusClient.prepare_index_params()
    params.add_index(DENSE, index_name=DENSE, **dense_index_params(spec.dense_type, lite=lite))
    if spec.has_sparse:
        params.add_index(SPARSE, index_name=SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    # Scalar index for filters and lookups by document id (the job itself deletes by primary key).
    params.add_index(C.DOC_ID, index_name=C.DOC_ID, index_type="INVERTED")
    return params


def _type_name(dtype: Any) -> str:
    return getattr(dtype, "name", str(dtype))


def schema_differences(description: Mapping[str, Any], spec: CollectionSpec) -> list[str]:
    """How an existing collection (``describe_collection`` output) differs from ``spec``; empty when it fits."""
    fields = {f["name"]: f for f in description.get("fields", [])}
    diffs: list[str] = []
    if (description.get("properties") or {}).get(KEY_SCHEME_PROPERTY) != KEY_SCHEME:
        diffs.append(f"its primary keys were not written with this job's key scheme ({KEY_SCHEME}): its rows would "
                     "be duplicated instead of replaced")

    def typ(name: str) -> DataType | None:
        return DataType(fields[name]["type"]) if name in fields else None

    pk = fields.get(C.PK)
    if pk is None or not pk.get("is_primary"):
        diffs.append(f"it has no primary key field '{C.PK}'")
    elif typ(C.PK) != DataType.VARCHAR:
        diffs.append(f"its primary key '{C.PK}' is {_type_name(typ(C.PK))}, the job writes VARCHAR ids")
    for name, want in ((C.DOC_ID, DataType.VARCHAR), (C.CHUNK_INDEX, DataType.INT32)):
        if typ(name) != want:
            diffs.append(f"field '{name}' is {_type_name(typ(name)) if name in fields else 'missing'}, "
                         f"the job writes {want.name}")
    want_dense = FIELD_TYPE[spec.dense_type]
    if typ(DENSE) != want_dense:
        diffs.append(f"its field '{DENSE}' is {_type_name(typ(DENSE)) if DENSE in fields else 'missing'}, "
                     f"milvus.dense_type {spec.dense_type} writes {want_dense.name}")
    else:
        dim = int(fields[DENSE].get("params", {}).get("dim", 0))
        if dim != spec.dense_dim:
            diffs.append(f"it has dense dim {dim}, config asks {spec.dense_dim}")
    has_sparse = typ(SPARSE) == DataType.SPARSE_FLOAT_VECTOR
    if has_sparse != spec.has_sparse:
        diffs.append("it has a sparse field but the model gives no sparse vectors" if has_sparse
                     else "it has no sparse field but the model gives sparse vectors")
    has_text = C.TEXT in fields
    if has_text != spec.store_text:
        diffs.append("it stores text but milvus.store_text is false" if has_text
                     else "it has no text field but milvus.store_text is true")
    elif has_text:
        length = int(fields[C.TEXT].get("params", {}).get("max_length", 0))
        if typ(C.TEXT) != DataType.VARCHAR or length != spec.text_max_length:
            diffs.append(f"its text field is {_type_name(typ(C.TEXT))}({length}), "
                         f"config asks VARCHAR({spec.text_max_length}) (milvus.text_max_length)")
    if C.EMBED_FP in fields and typ(C.EMBED_FP) != DataType.VARCHAR:
        diffs.append(f"field '{C.EMBED_FP}' is {_type_name(typ(C.EMBED_FP))}, the job writes VARCHAR")
    core = {C.PK, C.DOC_ID, C.CHUNK_INDEX, C.EMBED_FP, C.TEXT, DENSE, SPARSE}
    wanted = spec.metadata_types
    for name, want in wanted.items():
        if name not in fields:
            diffs.append(f"it has no metadata field '{name}'")
        elif typ(name) != want:
            diffs.append(f"metadata field '{name}' is {_type_name(typ(name))}, the source gives {want.name}")
    extra = sorted(n for n in fields if n not in core and n not in wanted)
    if extra:
        diffs.append(f"it has field(s) {extra} that are not in source.metadata_columns")
    return diffs


def has_fingerprints(description: Mapping[str, Any]) -> bool:
    """Whether a collection (``describe_collection`` output) has the ``embed_fp`` field."""
    return any(f["name"] == C.EMBED_FP for f in description.get("fields", []))


def recorded_model(description: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model a collection's vectors come from, as recorded at its creation (None: not recorded)."""
    raw = (description.get("properties") or {}).get(MODEL_PROPERTY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def model_differences(recorded: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    """What differs between the model a collection records and the one a run uses (name is only shown)."""
    diffs = []
    if recorded.get("fingerprint") != model.get("fingerprint"):
        diffs.append(f"its vectors come from model {recorded.get('name')!r} "
                     f"(fingerprint {recorded.get('fingerprint')}), "
                     f"this run's model {model.get('name')!r} has fingerprint {model.get('fingerprint')} (another "
                     "model, or the same path with other files)")
    for key in ("dense_dim", "dense_type"):
        if key in recorded and recorded.get(key) != model.get(key):
            diffs.append(f"its {key} is {recorded.get(key)}, this run's is {model.get(key)}")
    return diffs


def check_collection(client: MilvusClient, spec: CollectionSpec) -> None:
    """Raise :class:`SchemaMismatchError` when the existing collection ``spec.name`` does not fit ``spec``."""
    description = client.describe_collection(spec.name)
    diffs = schema_differences(description, spec)
    if diffs:
        raise SchemaMismatchError(
            f"collection '{spec.name}' does not fit this job: " + "; ".join(diffs)
            + f". Use another milvus.collection, change the configuration to match, or drop the collection "
            f"'{spec.name}' (its vectors are lost) and run again")
    if spec.model is None:
        return
    recorded = recorded_model(description)
    if recorded is None:  # made before models were recorded: adopt this one from now on
        log.warning("collection '%s' does not record which model made its vectors; recording %s (fingerprint %s) "
                    "from now on", spec.name, spec.model.get("name"), spec.model.get("fingerprint"))
        client.alter_collection_properties(spec.name, properties={MODEL_PROPERTY: json.dumps(dict(spec.model))})
        return
    diffs = model_differences(recorded, spec.model)
    if diffs:
        raise SchemaMismatchError(
            f"collection '{spec.name}' holds vectors of another model: " + "; ".join(diffs)
            + ". Vectors of two models in one index cannot be compared: to change the model, build a new "
            "collection with python -m jobs.reindex (it swaps the alias when the new one is complete), or "
            "write to another milvus.collection")


def _ensure_indexes_and_load(client: MilvusClient, spec: CollectionSpec, *, lite: bool) -> None:
    present = set(client.list_indexes(spec.name))
    wanted = build_index_params(spec, lite=lite)
    missing = IndexParams(i for i in wanted if i.field_name not in present and i.index_name not in present)
    if missing:
        # sync=False: do not poll the build (pymilvus sleeps 0.5 s per index); load waits as needed.
        client.create_index(spec.name, missing, sync=False)
    state = client.get_load_state(spec.name).get("state")
    if getattr(state, "name", str(state)) != "Loaded":
        client.load_collection(spec.name)


def ensure_collection(client: MilvusClient, spec: CollectionSpec, *, lite: bool | None = None) -> bool:
    """Create the collection when missing; else check that it fits. Either way, leave it indexed and loaded.

    Call it before embedding anything, so that a mismatch fails the job at once.

    Args:
        client: An open client (see :func:`cluster.milvus.connect.connect`).
        spec: What the job writes.
        lite: Whether the server is milvus-lite (picks the dense index); None = ask the server.

    Returns:
        True when the collection was created.

    Raises:
        SchemaMismatchError: The collection exists with another schema; the message names each
            difference and the fix.
    """
    lite = is_lite_client(client) if lite is None else lite
    if client.has_collection(spec.name):
        check_collection(client, spec)
        _ensure_indexes_and_load(client, spec, lite=lite)
        return False
    try:
        properties = {KEY_SCHEME_PROPERTY: KEY_SCHEME}
        if spec.model is not None:
            properties[MODEL_PROPERTY] = json.dumps(dict(spec.model))
        client.create_collection(spec.name, schema=build_schema(spec), properties=properties)
    except Exception:
        if not client.has_collection(spec.name):  # not a race with another writer creating it
            raise
        check_collection(client, spec)
        _ensure_indexes_and_load(client, spec, lite=lite)
        return False
    _ensure_indexes_and_load(client, spec, lite=lite)
    log.info("created collection '%s' (dense dim %d, sparse %s, text %s, metadata %s)", spec.name,
             spec.dense_dim, spec.has_sparse, spec.store_text, list(spec.metadata))
    return True
