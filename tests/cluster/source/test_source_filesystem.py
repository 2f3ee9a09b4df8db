"""filesystem(): local paths and s3:// through s3fs, storage options mapped, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from cluster.settings import SourceConfig
from cluster.source import SourceError, filesystem, list_shards, redact
from embedder.storage import full_path, s3_options


def test_local_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = filesystem("docs/part-*.jsonl")
    assert isinstance(fs, LocalFileSystem)
    assert path == f"{tmp_path}/docs/part-*.jsonl"
    _, path = filesystem(f"file://{tmp_path}/a.parquet")
    assert path == f"{tmp_path}/a.parquet"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert filesystem("~/x.jsonl")[1] == f"{tmp_path}/x.jsonl"
    assert full_path(fs, path) == path  # local shard paths carry no scheme


def test_s3_options_mapping() -> None:
    opts = s3_options({"endpoint_url": "http://h:1", "aws_access_key_id": "AK", "aws_secret_access_key": "SK",
                       "aws_session_token": "T", "anon": False, "client_kwargs": {"verify": False}})
    fail_fast = {"connect_timeout": 5, "retries": {"max_attempts": 2, "mode": "standard"}}
    assert opts == {"client_kwargs": {"verify": False, "endpoint_url": "http://h:1"},
                    "key": "AK", "secret": "SK", "token": "T", "anon": False, "config_kwargs": fail_fast}
    assert s3_options({"key": "k", "secret": "s"}) == {"key": "k", "secret": "s", "config_kwargs": fail_fast}
    assert s3_options(None) == {"config_kwargs": fail_fast}
    mine = {"connect_timeout": 30, "retries": {"max_attempts": 10}}  # the user's own settings win
    assert s3_options({"config_kwargs": mine})["config_kwargs"] == mine


def test_redact_masks_credentials_at_any_depth() -> None:
    shown = redact({"endpoint_url": "http://h", "key": "AK", "secret": "SK",
                    "client_kwargs": {"aws_secret_access_key": "SK2", "region_name": "r"}})
    assert shown == {"endpoint_url": "http://h", "key": "***", "secret": "***",
                     "client_kwargs": {"aws_secret_access_key": "***", "region_name": "r"}}


def test_s3_filesystem_talks_to_endpoint(s3_server: dict[str, object], s3_bucket: str, s3fs_client) -> None:
    s3fs_client.pipe(f"{s3_bucket}/a/x.jsonl", b'{"id": 1, "text": "t"}\n')
    fs, path = filesystem(f"s3://{s3_bucket}/a", s3_server)
    assert path == f"{s3_bucket}/a"
    assert fs.cat(f"{path}/x.jsonl") == b'{"id": 1, "text": "t"}\n'
    assert full_path(fs, f"{path}/x.jsonl") == f"s3://{s3_bucket}/a/x.jsonl"
    assert str(s3_server["secret"]) not in repr(fs) and str(s3_server["secret"]) not in str(fs)


def test_credentials_from_environment(s3_server: dict[str, object], s3_bucket: str, s3fs_client,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s3fs_client.pipe(f"{s3_bucket}/env/x.jsonl", b'{"id": 1, "text": "t"}\n')
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    cfg = SourceConfig(uri=f"s3://{s3_bucket}/env", storage_options={"endpoint_url": s3_server["endpoint_url"]})
    assert [s.name for s in list_shards(cfg)] == ["x.jsonl"]


def test_errors_never_show_secrets(s3_server: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    options = {**s3_server, "secret": "s3cr3t-value-XYZ"}
    cfg = SourceConfig(uri="s3://no-such-bucket-here/docs", storage_options=options)
    with pytest.raises(SourceError) as info:
        list_shards(cfg)
    text = f"{info.value} {info.value!r} {info.value.__cause__!r} {caplog.text} {cfg.uri}"
    assert "no-such-bucket-here" in str(info.value)
    assert "s3cr3t-value-XYZ" not in text
