"""milvus.dense_type: what each target accepts, and the bytes pymilvus puts in the request for each type."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from pymilvus.client.prepare import Prepare

from cluster.milvus.dense_types import check_supported, encode_query, encode_rows
from cluster.milvus.schema import CollectionSpec, build_schema, ensure_collection


@pytest.mark.parametrize(("kind", "lite", "bulk", "version", "says"), [
    ("float16", True, False, None, "milvus-lite stores float32 vectors only. Use a Milvus server >= 2.4"),
    ("int8", True, False, None, "server >= 2.6"),
    ("binary", False, True, None, "bulk_import writes float32 import files only"),
    ("int8", False, False, "v2.5.11", "needs a Milvus server >= 2.6; this one is v2.5.11"),
    ("bfloat16", False, False, "2.3.9", "needs a Milvus server >= 2.4"),
])
def test_a_target_without_the_type_is_refused_with_what_supports_it(kind, lite, bulk, version, says) -> None:
    with pytest.raises(ValueError, match="milvus.dense_type") as info:
        check_supported(kind, 64, lite=lite, bulk=bulk, version=version)
    assert says in str(info.value)


def test_supported_targets_pass() -> None:
    check_supported("float32", 10, lite=True, bulk=True, version=None)
    check_supported("int8", 64, lite=False, bulk=False, version="v2.6.3")
    check_supported("float16", 64, lite=False, bulk=False, version="v2.4.0")
    with pytest.raises(ValueError, match="multiple of 8"):
        check_supported("binary", 60, lite=False, bulk=False, version="v2.6.0")


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "int8", "binary"])
def test_rows_and_queries_of_each_type_are_what_a_server_receives(kind: str) -> None:
    """No Milvus server runs here: the request pymilvus builds for the collection's schema is checked instead."""
    spec = CollectionSpec(name="x", dense_dim=16, has_sparse=False, dense_type=kind, int8_scale=300.0)
    fields = build_schema(spec).to_dict()["fields"]
    m = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32) / 4
    rows = [{"pk": f"k{i}", "doc_id": "d", "chunk_index": i, "embed_fp": "", "text": "t", "dense": v}
            for i, v in enumerate(encode_rows(m, kind, 300.0))]
    dense = next(f for f in Prepare.row_upsert_param("x", rows, "", fields).fields_data if f.field_name == "dense")
    want = {"float16": m.astype(np.float16).tobytes(), "bfloat16": m.astype(ml_dtypes.bfloat16).tobytes(),
            "int8": np.clip(np.rint(m * 300.0), -127, 127).astype(np.int8).tobytes(),
            "binary": np.packbits(m > 0, axis=1).tobytes()}[kind]
    got = {"float16": dense.vectors.float16_vector, "bfloat16": dense.vectors.bfloat16_vector,
           "int8": dense.vectors.int8_vector, "binary": dense.vectors.binary_vector}[kind]
    assert dense.vectors.dim == 16 and got == want
    request = Prepare.search_requests_with_expr("x", "dense", {"metric_type": "IP", "params": {}}, 5,
                                                data=[encode_query(m[0], kind, 300.0)])
    assert request.nq == 1


def test_milvus_lite_collections_are_float32(lite_client) -> None:
    ensure_collection(lite_client, CollectionSpec(name="plain32", dense_dim=8, has_sparse=False))
    fields = {f["name"]: f for f in lite_client.describe_collection("plain32")["fields"]}
    assert fields["dense"]["type"].name == "FLOAT_VECTOR"
