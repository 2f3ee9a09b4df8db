"""Model sources: local folders, hub ids, and s3:// prefixes downloaded once into the cache (real moto S3)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from embedder.models.source import COMPLETE_MARKER, resolve_model_path
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig

PREFIX = "models/tiny-m3"


def s3fs_of(opts: dict[str, object]):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": opts["endpoint_url"]}, key=opts["key"],
                             secret=opts["secret"], skip_instance_cache=True)


def local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def upload(fs, src: Path, dest: str) -> int:
    files = [p for p in src.rglob("*") if p.is_file()]
    for p in files:
        fs.put_file(str(p), f"{dest}/{p.relative_to(src)}")
    return len(files)


@pytest.fixture()
def s3_model(s3_server: dict[str, object], s3_bucket: str, tiny_m3_dir: Path, tmp_path: Path) -> ModelConfig:
    """The tiny model uploaded under s3://bucket/models/tiny-m3 (plus a sibling prefix that must not leak in)."""
    fs = s3fs_of(s3_server)
    assert upload(fs, tiny_m3_dir, f"{s3_bucket}/{PREFIX}") >= 8
    fs.pipe_file(f"{s3_bucket}/{PREFIX}-extra/junk.txt", b"not part of the model")
    return ModelConfig(name=f"s3://{s3_bucket}/{PREFIX}", storage_options=dict(s3_server),
                       cache_dir=str(tmp_path / "cache"), precision="fp32", device="cpu")


def test_s3_model_downloads_once_and_loads(s3_model: ModelConfig, s3_server: dict[str, object], s3_bucket: str,
                                           tiny_m3_dir: Path, tmp_path: Path) -> None:
    from embedder.encoder import Encoder

    path = Path(resolve_model_path(s3_model))
    assert path.parent == tmp_path / "cache"
    assert path.name.startswith("tiny-m3-")
    downloaded = local_files(path)
    assert downloaded.pop(COMPLETE_MARKER).decode().strip() == s3_model.name
    assert downloaded == local_files(tiny_m3_dir), "byte-identical copy, and nothing from the sibling prefix"
    assert not [p for p in path.parent.iterdir() if ".partial-" in p.name]

    # The second resolve uses the cache: nothing rewritten, and it works with the S3 copy gone.
    marker = path / COMPLETE_MARKER
    before = (marker.stat().st_mtime_ns, (path / "model.safetensors").stat().st_ino)
    s3fs_of(s3_server).rm(f"{s3_bucket}/{PREFIX}", recursive=True)
    assert resolve_model_path(s3_model) == str(path)
    trailing = ModelConfig(name=s3_model.name + "/", storage_options=s3_model.storage_options,
                           cache_dir=s3_model.cache_dir)
    assert resolve_model_path(trailing) == str(path)
    assert (marker.stat().st_mtime_ns, (path / "model.safetensors").stat().st_ino) == before

    # The Encoder loads the s3:// model from the cache and gives the local model's vectors.
    texts = ["The quick brown fox jumps over the lazy dog.", "Hund", "Быстрая коричневая лиса"]
    from_s3 = Encoder(s3_model, BatchConfig(max_tokens=128), ChunkingConfig())
    assert from_s3.info.path == str(path)
    local = Encoder(ModelConfig(name=str(tiny_m3_dir), precision="fp32", device="cpu"), BatchConfig(max_tokens=128),
                    ChunkingConfig())
    _, a = from_s3.encode_passages(texts)
    _, b = local.encode_passages(texts)
    np.testing.assert_array_equal(a.dense, b.dense)
    assert from_s3.has_sparse and [a.sparse.row(i) for i in range(3)] == [b.sparse.row(i) for i in range(3)]


def test_s3_prefix_without_files_is_an_error(s3_server: dict[str, object], s3_bucket: str, tmp_path: Path) -> None:
    cfg = ModelConfig(name=f"s3://{s3_bucket}/nothing/here", storage_options=dict(s3_server),
                      cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no files"):
        resolve_model_path(cfg)
    cache = tmp_path / "cache"  # the prefix is listed first: nothing is created for a model that is not there
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.endswith(".lock")]


def _resolve_in_child(cfg: ModelConfig, barrier, queue) -> None:  # noqa: ANN001 - multiprocessing proxies
    """Spawned process: wait for the sibling, resolve, report the path and the marker's identity."""
    try:
        barrier.wait(timeout=120)
        path = Path(resolve_model_path(cfg))
        st = (path / COMPLETE_MARKER).stat()
        queue.put(("ok", str(path), st.st_ino, st.st_mtime_ns, os.getpid()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(e), 0, 0, os.getpid()))


def test_concurrent_resolves_from_two_processes(s3_model: ModelConfig, tiny_m3_dir: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_resolve_in_child, args=(s3_model, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert len({r[1] for r in results}) == 1, "both processes get the same folder"
    assert len({(r[2], r[3]) for r in results}) == 1, "the folder was written once, not replaced by a second download"
    path = Path(results[0][1])
    files = local_files(path)
    assert files.pop(COMPLETE_MARKER).decode().strip() == s3_model.name
    assert files == local_files(tiny_m3_dir)
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert entries == sorted([path.name, f".{path.name}.lock"]), "one complete folder, no partial download left"


# ---------------------------------------------------------------- local folders and hub ids


def test_local_folder_resolves_to_its_absolute_path(tiny_m3_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_m3_dir.parent)
    assert resolve_model_path(ModelConfig(name=f"./{tiny_m3_dir.name}")) == str(tiny_m3_dir.resolve())
    assert resolve_model_path(ModelConfig(name=str(tiny_m3_dir))) == str(tiny_m3_dir.resolve())


def test_local_file_or_missing_folder_is_an_error(tiny_m3_dir: Path) -> None:
    with pytest.raises(ValueError, match="is a file"):
        resolve_model_path(ModelConfig(name=str(tiny_m3_dir / "config.json")))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_model_path(ModelConfig(name=str(tiny_m3_dir.parent / "missing-model")))


def test_hub_id_is_passed_through() -> None:
    assert resolve_model_path(ModelConfig(name="intfloat/multilingual-e5-small")) == "intfloat/multilingual-e5-small"
