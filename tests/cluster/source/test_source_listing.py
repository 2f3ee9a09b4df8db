"""list_shards(): files, folders, globs and s3:// prefixes, in a deterministic order."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from cluster.settings import SourceConfig
from cluster.source import ACCEPTED, Shard, SourceError, format_of, list_shards


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b'{"id": 1, "text": "x"}\n')


def names(shards: list[Shard], root: Path | str) -> list[str]:
    return [s.path[len(str(root)) + 1:] for s in shards]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    touch(tmp_path, "b.jsonl", "a.parquet", "sub/c.jsonl.gz", "sub/deeper/d.ndjson", "sub/E.PARQUET", "x.pq",
          "notes.txt", "readme.json", "_SUCCESS", ".hidden.jsonl", "_tmp/e.jsonl", ".git/f.parquet", "sub/g.ndjson.gz")
    return tmp_path


def test_folder_is_listed_recursively_and_sorted(tree: Path) -> None:
    shards = list_shards(SourceConfig(uri=str(tree)))
    assert names(shards, tree) == ["a.parquet", "b.jsonl", "sub/E.PARQUET", "sub/c.jsonl.gz",
                                   "sub/deeper/d.ndjson", "sub/g.ndjson.gz", "x.pq"]
    assert [s.format for s in shards] == ["parquet", "jsonl", "parquet", "jsonl.gz", "jsonl", "jsonl.gz", "parquet"]
    assert all(s.size == 23 and s.version.startswith("mtime:") for s in shards)
    assert list_shards(SourceConfig(uri=str(tree) + "/")) == shards


def test_relative_uri_gives_absolute_paths(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    shards = list_shards(SourceConfig(uri="sub"))
    assert shards[0].path == f"{tree}/sub/E.PARQUET"


def test_globs(tree: Path) -> None:
    assert names(list_shards(SourceConfig(uri=f"{tree}/*.jsonl")), tree) == ["b.jsonl"]
    assert names(list_shards(SourceConfig(uri=f"{tree}/**/*.parquet")), tree) == ["a.parquet"]  # case-sensitive glob
    assert names(list_shards(SourceConfig(uri=f"{tree}/s*")), tree) == [  # matched folders are listed recursively
        "sub/E.PARQUET", "sub/c.jsonl.gz", "sub/deeper/d.ndjson", "sub/g.ndjson.gz"]
    assert names(list_shards(SourceConfig(uri=f"{tree}/[ab].*")), tree) == ["a.parquet", "b.jsonl"]
    everything = names(list_shards(SourceConfig(uri=f"{tree}/*")), tree)  # hidden folders stay out
    assert everything == names(list_shards(SourceConfig(uri=str(tree))), tree)


def test_single_file(tree: Path) -> None:
    (shard,) = list_shards(SourceConfig(uri=f"{tree}/sub/c.jsonl.gz"))
    assert shard == Shard(path=f"{tree}/sub/c.jsonl.gz", format="jsonl.gz", size=23, version=shard.version)
    with pytest.raises(SourceError, match="cannot tell the format"):
        list_shards(SourceConfig(uri=f"{tree}/notes.txt"))
    (forced,) = list_shards(SourceConfig(uri=f"{tree}/notes.txt", format="jsonl"))
    assert forced.format == "jsonl"


def test_forced_format_takes_every_visible_file(tree: Path) -> None:
    shards = list_shards(SourceConfig(uri=str(tree), format="jsonl"))
    assert "notes.txt" in names(shards, tree) and "readme.json" in names(shards, tree)
    assert "_SUCCESS" not in names(shards, tree) and ".hidden.jsonl" not in names(shards, tree)
    assert {s.format for s in shards} == {"jsonl"}


def test_empty_listing_names_uri_and_extensions(tmp_path: Path) -> None:
    touch(tmp_path, "a.csv", "b.txt")
    with pytest.raises(SourceError) as info:
        list_shards(SourceConfig(uri=str(tmp_path)))
    message = str(info.value)
    assert str(tmp_path) in message and ACCEPTED in message and ".jsonl.gz" in message
    assert "a.csv" in message and "source.format" in message
    with pytest.raises(SourceError, match="no shards found"):
        list_shards(SourceConfig(uri=f"{tmp_path}/*.parquet"))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file") as info:
        list_shards(SourceConfig(uri=f"{tmp_path}/nope"))
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_shard_is_frozen_picklable_and_versioned(tmp_path: Path) -> None:
    touch(tmp_path, "a.jsonl")
    (shard,) = list_shards(SourceConfig(uri=str(tmp_path)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        shard.size = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(shard)) == shard and shard.name == "a.jsonl"
    os.utime(tmp_path / "a.jsonl", (1_000_000, 1_000_000))
    (again,) = list_shards(SourceConfig(uri=str(tmp_path)))
    assert again.version != shard.version and again.path == shard.path


def test_format_of() -> None:
    assert format_of("s3://b/x.JSONL.GZ") == "jsonl.gz"
    assert format_of("a.ndjson") == "jsonl"
    assert format_of("a.json") is None and format_of("a.gz") is None


def test_s3_prefix_glob_and_bucket(s3_server: dict[str, object], s3_bucket: str, s3fs_client) -> None:
    b = s3_bucket
    s3fs_client.pipe({f"{b}/docs/part-1.jsonl": b"x\n", f"{b}/docs/part-0.parquet": b"pq",
                      f"{b}/docs/2024/part-2.jsonl.gz": b"gz", f"{b}/docs/_SUCCESS": b"",
                      f"{b}/docs/notes.txt": b"n", f"{b}/other/z.jsonl": b"z\n"})
    s3fs_client.touch(f"{b}/docs/empty-folder/")
    shards = list_shards(SourceConfig(uri=f"s3://{b}/docs", storage_options=s3_server))
    assert [s.path for s in shards] == [f"s3://{b}/docs/2024/part-2.jsonl.gz", f"s3://{b}/docs/part-0.parquet",
                                        f"s3://{b}/docs/part-1.jsonl"]
    assert [s.size for s in shards] == [2, 2, 2]
    assert all(s.version.startswith("etag:") and '"' not in s.version for s in shards)
    glob = list_shards(SourceConfig(uri=f"s3://{b}/docs/part-*", storage_options=s3_server))
    assert [s.name for s in glob] == ["part-0.parquet", "part-1.jsonl"]
    whole = list_shards(SourceConfig(uri=f"s3://{b}", storage_options=s3_server))
    assert len(whole) == 4 and whole[-1].path == f"s3://{b}/other/z.jsonl"
    # a re-listing sees new objects (no stale listing cache)
    s3fs_client.pipe(f"{b}/docs/part-3.jsonl", b"y\n")
    assert len(list_shards(SourceConfig(uri=f"s3://{b}/docs", storage_options=s3_server))) == 4


def test_s3_missing_prefix_suggests_glob(s3_server: dict[str, object], s3_bucket: str, s3fs_client) -> None:
    s3fs_client.pipe(f"{s3_bucket}/docs/part-1.jsonl", b"x\n")
    with pytest.raises(SourceError, match=r"no such file.*use a glob"):
        list_shards(SourceConfig(uri=f"s3://{s3_bucket}/docs/par", storage_options=s3_server))
