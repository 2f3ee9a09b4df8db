"""Listing the shards of a source: a file, a folder (recursive), a glob, or an s3:// prefix or glob."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from cluster.settings import SourceConfig
from cluster.source.errors import SourceError
from cluster.source.storage_retry import retry
from embedder.storage import filesystem, full_path, protocol_of

#: File name endings recognized when ``source.format`` is ``auto`` (matched case-insensitively).
EXTENSIONS: tuple[tuple[str, str], ...] = (
    (".jsonl.gz", "jsonl.gz"), (".ndjson.gz", "jsonl.gz"),
    (".parquet", "parquet"), (".pq", "parquet"),
    (".jsonl", "jsonl"), (".ndjson", "jsonl"),
)
ACCEPTED = ", ".join(ext for ext, _ in EXTENSIONS)
_MAGIC = ("*", "?", "[")


@dataclass(frozen=True)
class Shard:
    """One file of documents.

    Attributes:
        path: Full path: ``s3://bucket/key`` on object storage, an absolute path for local files.
        format: ``parquet``, ``jsonl`` or ``jsonl.gz``.
        size: Size in bytes at listing time.
        version: Changes when the content changes: ``etag:<etag>`` on S3, ``mtime:<seconds>``
            for local files (used by incremental runs to skip unchanged shards).
    """

    path: str
    format: str
    size: int
    version: str

    @property
    def name(self) -> str:
        """The file name (last path component)."""
        return posixpath.basename(self.path)


def format_of(path: str) -> str | None:
    """The format implied by ``path``'s extension, or None when it is not a recognized one."""
    lower = path.lower()
    for ext, fmt in EXTENSIONS:
        if lower.endswith(ext):
            return fmt
    return None


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5"):
        if info.get(key):
            return f"etag:{str(info[key]).strip(chr(34))}"
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is not None:
            return f"mtime:{value.isoformat() if hasattr(value, 'isoformat') else repr(value)}"
    return f"size:{info.get('size', 0)}"


def _hidden(path: str, root: str) -> bool:
    """Hidden below ``root``: a file or folder name starting with '.' or '_' (_SUCCESS, .crc, _temporary/)."""
    rel = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    return any(part[:1] in (".", "_") for part in rel.split("/") if part)


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    cut = min(pattern.index(c) for c in _MAGIC if c in pattern)
    return pattern[:cut].rsplit("/", 1)[0] + "/"


def _files_under(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, dict[str, Any]]:
    found = fs.find(folder, detail=True)
    return {name: info for name, info in found.items()
            if info.get("type") == "file" and not name.endswith("/") and not _hidden(name, folder.rstrip("/") + "/")}


def _candidates(fs: fsspec.AbstractFileSystem, path: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """Files named by ``path``; the flag is True when ``path`` names one file explicitly."""
    fs.invalidate_cache()  # long-lived processes must not see a stale listing
    if any(c in path for c in _MAGIC):
        root = _glob_root(path)
        files: dict[str, dict[str, Any]] = {}
        for name, info in fs.glob(path, detail=True).items():
            if _hidden(name, root):
                continue
            if info.get("type") == "directory":
                files.update(_files_under(fs, name))
            elif not name.endswith("/"):
                files[name] = info
        return files, False
    info = fs.info(path)
    if info.get("type") == "directory":
        return _files_under(fs, path), False
    return {info.get("name", path): info}, True


def list_shards(cfg: SourceConfig) -> list[Shard]:
    """The shards of ``cfg.uri``, sorted by path.

    ``cfg.uri`` may be a file, a folder (listed recursively), a glob (``*``, ``?``, ``[...]``,
    ``**``; folders it matches are listed recursively) or the same on ``s3://``. In folders and
    globs, names starting with '.' or '_' (``_SUCCESS``, ``.crc``, ``_temporary/``) are skipped,
    and with ``format: auto`` so is every file without a recognized extension (:data:`ACCEPTED`).
    A forced format applies to every listed file whatever its extension. Listing is retried on
    transient storage errors.

    Args:
        cfg: The source settings (``uri``, ``format``, ``storage_options``).

    Returns:
        The shards, sorted by path; never empty.

    Raises:
        SourceError: Nothing matches, the path does not exist, access is denied, a single file
            has an unknown extension with ``format: auto``, or listing keeps failing.
    """
    fs, path = filesystem(cfg.uri, cfg.storage_options)
    try:
        files, explicit = retry(lambda: _candidates(fs, path), what=f"listing {cfg.uri}")
    except FileNotFoundError as e:
        hint = (" (for an S3 key prefix that is not a folder, use a glob such as s3://bucket/docs/part-*)"
                if protocol_of(cfg.uri) in ("s3", "s3a") else "")
        raise SourceError(f"source.uri {cfg.uri}: no such file, folder or bucket{hint}") from e
    except PermissionError as e:
        raise SourceError(f"source.uri {cfg.uri}: access denied ({e}); check the credentials in "
                          "source.storage_options (key/secret) or the AWS_* environment variables") from e
    except Exception as e:
        raise SourceError(f"source.uri {cfg.uri}: listing failed: {type(e).__name__}: {e}") from e

    shards: list[Shard] = []
    skipped: list[str] = []
    for name, info in files.items():
        fmt = cfg.format if cfg.format != "auto" else format_of(name)
        if fmt is None:
            if explicit:
                raise SourceError(f"source.uri {cfg.uri}: cannot tell the format from the file name; "
                                  f"rename it to end in one of {ACCEPTED}, or set source.format")
            skipped.append(posixpath.basename(name))
            continue
        shards.append(Shard(path=full_path(fs, name), format=fmt, size=int(info.get("size") or 0),
                            version=_version(info)))
    if not shards:
        other = ""
        if skipped:
            other = (f"; {len(skipped)} file(s) with other extensions were skipped (e.g. {sorted(skipped)[:3]}), "
                     "set source.format to read them anyway")
        raise SourceError(f"source.uri {cfg.uri}: no shards found; expected files ending in {ACCEPTED}{other}")
    shards.sort(key=lambda s: s.path)
    return shards
