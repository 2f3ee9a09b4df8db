"""Where model weights come from: a Hugging Face id, a local folder, or an s3:// prefix.

An ``s3://`` model is downloaded once per node into ``model.cache_dir``; a file lock makes
the other actors on that node wait for the first download instead of racing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from embedder.settings import ModelConfig

log = logging.getLogger(__name__)
COMPLETE_MARKER = ".download-complete"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def resolve_model_path(cfg: ModelConfig) -> str:
    """Return a local folder or Hugging Face id that ``SentenceTransformer`` can load offline."""
    if cfg.name.startswith("s3://"):
        return str(download_s3_model(cfg.name, Path(cfg.cache_dir).expanduser(), cfg.storage_options))
    local = Path(cfg.name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"model.name {cfg.name!r} is a file; give the model folder")
        return str(local.resolve())
    if cfg.name.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model.name {cfg.name!r}: no such folder")
    return cfg.name  # a hub id, served from the local Hugging Face cache when offline


def download_s3_model(uri: str, cache_dir: Path, storage_options: dict[str, object]) -> Path:
    """Copy the model folder at ``uri`` into ``cache_dir`` once; concurrent callers wait on a lock.

    The cached copy is named for the objects' keys, sizes and ETags: a model replaced in place under the
    same prefix is downloaded again, never served from the old copy.
    """
    uri = uri.rstrip("/")
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        listing = "\n".join(f"{k}\0{n}\0{e}" for k, n, e in s3_objects(uri, storage_options))
    except Exception as e:  # noqa: BLE001 - S3 gone or the prefix emptied: a complete copy still serves
        cached = _cached_copies(cache_dir, base, uri)
        if not cached:
            raise
        log.warning("cannot list %s (%s: %s): using the cached copy %s", uri, type(e).__name__, e, cached[0])
        return cached[0]
    key = hashlib.sha256(f"{uri.rstrip('/')}\n{listing}".encode()).hexdigest()[:16]
    target = cache_dir / f"{base}-{key}"
    if (target / COMPLETE_MARKER).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE_MARKER).exists():  # another actor finished while we waited
            return target
        fs, root = _s3(uri, storage_options)
        files = [f for f in fs.find(root) if not f.endswith("/")]
        if not files:
            raise FileNotFoundError(f"model.name {uri}: no files under this prefix")
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        for remote in files:
            local = partial / remote[len(root):].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
        (partial / COMPLETE_MARKER).write_text(uri + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        log.info("downloaded model %s (%d files) to %s in %.1fs", uri, len(files), target,
                 time.monotonic() - started)
    return target


def s3_objects(uri: str, storage_options: dict[str, object]) -> list[tuple[str, int, str]]:
    """``(key relative to the prefix, size, ETag)`` of every object of an ``s3://`` model, sorted."""
    fs, root = _s3(uri, storage_options)
    fs.invalidate_cache(root)  # a listing cached by this process would hide a model replaced since
    found = fs.find(root, detail=True)
    out = []
    for key, info in sorted(found.items()):
        if key.endswith("/"):
            continue
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        out.append((key[len(root):].lstrip("/"), int(info.get("size") or 0), etag))
    if not out:
        raise FileNotFoundError(f"model.name {uri}: no files under this prefix")
    return out


def _cached_copies(cache_dir: Path, base: str, uri: str) -> list[Path]:
    """Complete cached copies of ``uri``, newest first."""
    if not cache_dir.is_dir():
        return []
    found = [p for p in cache_dir.glob(f"{base}-*") if (p / COMPLETE_MARKER).is_file()
             and (p / COMPLETE_MARKER).read_text().strip().rstrip("/") == uri.rstrip("/")]
    return sorted(found, key=lambda p: (p / COMPLETE_MARKER).stat().st_mtime_ns, reverse=True)


def _s3(uri: str, storage_options: dict[str, object]):  # noqa: ANN202 - (fsspec filesystem, root)
    """The filesystem of an ``s3://`` model: the job's one translation of s3fs-style options into a client."""
    try:
        from embedder.storage import filesystem
    except ImportError as e:  # fsspec missing (e.g. the GPU benchmark machine)
        raise ImportError("an s3:// model needs fsspec and s3fs: pip install 's3fs[boto3]'") from e
    fs, root = filesystem(uri, storage_options)
    return fs, root.rstrip("/")


def check_model_folder(path: Path, name: str) -> None:
    """Raise a FileNotFoundError naming what a local model folder lacks to be loadable.

    A sentence-transformers folder has ``modules.json``; its transformer module's folder (the
    root, or e.g. ``0_Transformer/`` in older layouts) has ``config.json`` and the weights
    (``model.safetensors``, ``pytorch_model.bin``, or the ``.index.json`` of sharded ones).
    """
    import json

    missing = []
    transformer_dir = path
    modules = path / "modules.json"
    if not modules.is_file():
        missing.append("modules.json (the sentence-transformers module list)")
    else:
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            first = next((m for m in entries if str(m.get("type", "")).endswith("Transformer")), None)
        except (ValueError, AttributeError, TypeError) as e:
            raise ValueError(f"model.name {name!r}: {modules} is not a valid modules.json ({e})") from e
        if first is not None and first.get("path"):
            transformer_dir = path / first["path"]
    where = "" if transformer_dir == path else f" in {transformer_dir.relative_to(path)}/"
    if not (transformer_dir / "config.json").is_file():
        missing.append(f"config.json{where}")
    if not any((transformer_dir / w).is_file() for w in WEIGHT_FILES):
        missing.append(f"weights{where} ({', '.join(WEIGHT_FILES)})")
    if missing:
        raise FileNotFoundError(f"model.name {name!r} ({path}) is not a sentence-transformers model folder: it lacks "
                                f"{'; '.join(missing)}. Give the folder that holds the model (`make model` writes "
                                "the demo's), or a Hugging Face id")
