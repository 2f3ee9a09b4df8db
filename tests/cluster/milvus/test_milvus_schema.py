"""Connecting, creating the collection, and refusing a collection that does not fit."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pyarrow as pa
import pytest
from pymilvus import DataType

from cluster.milvus.connect import connect
from cluster.milvus.errors import MilvusConnectError, SchemaMismatchError, redact, secrets_of
from cluster.milvus.schema import CollectionSpec, ensure_collection, milvus_type
from cluster.settings import MilvusConfig

META = {"lang": pa.string(), "year": pa.int64()}


def spec(**kw: object) -> CollectionSpec:
    args: dict[str, object] = {"name": "docs", "dense_dim": 16, "has_sparse": True, "metadata": dict(META)}
    args.update(kw)
    return CollectionSpec(**args)  # type: ignore[arg-type]


def test_metadata_types_map_and_unsupported_names_the_column() -> None:
    assert milvus_type("a", pa.string()) == DataType.VARCHAR
    assert milvus_type("a", pa.large_string()) == DataType.VARCHAR
    assert milvus_type("a", pa.int32()) == DataType.INT64
    assert milvus_type("a", pa.uint16()) == DataType.INT64
    assert milvus_type("a", pa.float32()) == DataType.DOUBLE
    assert milvus_type("a", pa.bool_()) == DataType.BOOL
    assert milvus_type("a", DataType.INT32) == DataType.INT32
    with pytest.raises(TypeError, match=r"'tags'.*list<item: string>.*supported: string, integer"):
        milvus_type("tags", pa.list_(pa.string()))
    with pytest.raises(TypeError, match="'when'"):
        CollectionSpec(name="docs", dense_dim=4, has_sparse=False, metadata={"when": pa.timestamp("s")})
    with pytest.raises(ValueError, match="reserved"):
        CollectionSpec(name="docs", dense_dim=4, has_sparse=False, metadata={"text": pa.string()})


def test_create_then_reopen_with_same_spec(lite_cfg: MilvusConfig, lite_client) -> None:
    assert Path(lite_cfg.uri).parent.is_dir()
    assert ensure_collection(lite_client, spec()) is True
    assert ensure_collection(lite_client, spec()) is False
    desc = lite_client.describe_collection("docs")
    fields = {f["name"]: f for f in desc["fields"]}
    assert list(fields) == ["pk", "doc_id", "chunk_index", "embed_fp", "text", "dense", "sparse", "lang", "year"]
    assert fields["pk"]["is_primary"] and fields["pk"]["type"] == DataType.VARCHAR
    assert fields["pk"]["params"]["max_length"] == 512 and not desc["auto_id"]
    assert fields["chunk_index"]["type"] == DataType.INT32
    assert fields["dense"]["params"]["dim"] == 16
    assert fields["year"]["type"] == DataType.INT64 and fields["year"].get("nullable")
    assert lite_client.describe_index("docs", "dense")["index_type"] == "HNSW"
    assert lite_client.describe_index("docs", "sparse")["index_type"] == "SPARSE_INVERTED_INDEX"
    assert lite_client.describe_index("docs", "sparse")["metric_type"] == "IP"
    assert str(lite_client.get_load_state("docs")["state"]).endswith("Loaded")


def test_without_text_and_sparse(lite_client) -> None:
    s = spec(store_text=False, has_sparse=False, metadata={})
    ensure_collection(lite_client, s)
    names = [f["name"] for f in lite_client.describe_collection("docs")["fields"]]
    assert names == ["pk", "doc_id", "chunk_index", "embed_fp", "dense"]
    assert ensure_collection(lite_client, s) is False


@pytest.mark.parametrize(("other", "message"), [
    (spec(dense_dim=8), "it has dense dim 16, config asks 8"),
    (spec(has_sparse=False), "it has a sparse field but the model gives no sparse vectors"),
    (spec(store_text=False), "it stores text but milvus.store_text is false"),
    (spec(text_max_length=100), "config asks VARCHAR(100)"),
    (spec(metadata={"lang": pa.string()}), "field(s) ['year'] that are not in source.metadata_columns"),
    (spec(metadata={**META, "source": pa.string()}), "it has no metadata field 'source'"),
    (spec(metadata={"lang": pa.string(), "year": pa.float64()}),
     "metadata field 'year' is INT64, the source gives DOUBLE"),
])
def test_mismatch_is_refused_with_the_difference_and_the_fix(lite_client, other: CollectionSpec,
                                                              message: str) -> None:
    ensure_collection(lite_client, spec())
    with pytest.raises(SchemaMismatchError) as info:
        ensure_collection(lite_client, other)
    text = str(info.value)
    assert message in text
    assert "collection 'docs'" in text and "another milvus.collection" in text and "drop the collection" in text
    assert isinstance(info.value, ValueError)


def test_mismatch_lists_every_difference(lite_client) -> None:
    ensure_collection(lite_client, spec(has_sparse=False))
    with pytest.raises(SchemaMismatchError, match=r"dense dim 16, config asks 32.*has no sparse field"):
        ensure_collection(lite_client, spec(dense_dim=32))


def test_integer_pk_collection_is_refused(lite_client) -> None:
    lite_client.create_collection("docs", dimension=16, primary_field_name="pk", vector_field_name="dense")
    with pytest.raises(SchemaMismatchError, match="primary key 'pk' is INT64"):
        ensure_collection(lite_client, spec())


def test_local_uri_must_end_with_db(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.db"):
        MilvusConfig(uri=str(tmp_path / "milvus"))


def test_connect_error_never_shows_the_token(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("MILVUS_TOKEN", raising=False)
    secret = "root:Sup3rSecretPw"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = MilvusConfig(uri=f"http://admin:HiddenPass@127.0.0.1:{port}", token=secret)
    with caplog.at_level(logging.DEBUG), pytest.raises(MilvusConnectError) as info:
        connect(cfg, timeout=1.0)
    shown = str(info.value) + repr(info.value.__cause__) + caplog.text
    assert "127.0.0.1" in str(info.value) and "milvus.token" in str(info.value)
    for leak in ("Sup3rSecretPw", "HiddenPass"):
        assert leak not in shown


def test_redact() -> None:
    secrets = secrets_of("user:longpassword")
    assert redact("token user:longpassword and longpassword", secrets) == "token *** and ***"
    assert redact("https://u:p@host:19530/db", []) == "https://***@host:19530/db"


def test_a_collection_records_its_model_and_refuses_another(lite_client) -> None:
    from cluster.milvus.schema import has_fingerprints, recorded_model

    model = {"name": "/models/e5", "fingerprint": "a" * 32, "dense_dim": 16, "dense_type": "float32"}
    assert ensure_collection(lite_client, spec(model=model)) is True
    assert recorded_model(lite_client.describe_collection("docs")) == model
    assert ensure_collection(lite_client, spec(model=model)) is False
    for other, says in (({**model, "fingerprint": "b" * 32}, "fingerprint " + "b" * 32),
                        ({**model, "dense_type": "int8"}, "its dense_type is float32, this run's is int8")):
        with pytest.raises(SchemaMismatchError) as info:
            ensure_collection(lite_client, spec(model=other))
        assert says in str(info.value) and "jobs.reindex" in str(info.value)
    assert recorded_model(lite_client.describe_collection("docs")) == model  # a refusal changes nothing
    assert has_fingerprints(lite_client.describe_collection("docs"))


def test_a_collection_made_before_fingerprints_is_opened_and_adopts_the_model(lite_client) -> None:
    from cluster.milvus.schema import has_fingerprints, recorded_model

    old = spec(fingerprints=False)  # as an earlier version made it: no embed_fp, no model property
    assert ensure_collection(lite_client, old) is True
    desc = lite_client.describe_collection("docs")
    assert not has_fingerprints(desc) and recorded_model(desc) is None
    model = {"name": "m", "fingerprint": "c" * 32, "dense_dim": 16, "dense_type": "float32"}
    assert ensure_collection(lite_client, spec(model=model)) is False  # no refusal: embed_fp is optional
    assert recorded_model(lite_client.describe_collection("docs")) == model
