"""Object storage behind a uri: local paths and ``s3://`` (s3fs), the one translation of s3 options, secrets
kept out of sight. Used by the model source (s3:// models) and by every part of ``cluster/``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

#: Option names whose values are credentials; :func:`redact` masks them.
SECRET_OPTIONS = frozenset({
    "key", "secret", "token", "password", "session_token", "access_key", "secret_key",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
})
_S3_ALIASES = {"aws_access_key_id": "key", "aws_secret_access_key": "secret", "aws_session_token": "token"}
_LOCAL = ("", "file", "local")


def protocol_of(uri: str) -> str:
    """The scheme of ``uri`` (``"s3"``, ``"gs"``...), or ``""`` for a local path.

    Args:
        uri: A local path or ``scheme://...`` url.
    """
    if "://" not in uri:
        return ""
    return uri.split("://", 1)[0].lower()


def is_local(uri: str) -> bool:
    """True for local paths and ``file://`` urls."""
    return protocol_of(uri) in _LOCAL


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of storage options fit for logs and error messages: credentials become ``"***"``.

    Args:
        options: s3fs/fsspec storage options, possibly nested (``client_kwargs``).
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        if str(name).lower() in SECRET_OPTIONS and value is not None:
            out[name] = "***"
        elif isinstance(value, Mapping):
            out[name] = redact(value)
        else:
            out[name] = value
    return out


def s3_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Translate the config's storage options into ``s3fs.S3FileSystem`` keyword arguments.

    ``endpoint_url`` (and ``region_name``) move into ``client_kwargs``; the boto-style names
    ``aws_access_key_id``/``aws_secret_access_key``/``aws_session_token`` become s3fs's
    ``key``/``secret``/``token``. Everything else is passed through unchanged. When no
    credentials are given, s3fs/botocore use their usual chain (``AWS_*`` environment
    variables, ``~/.aws``, instance roles); ``AWS_ENDPOINT_URL`` is honored by botocore too.

    Args:
        storage_options: The ``source.storage_options`` mapping (may be empty or None).

    Returns:
        Keyword arguments for ``s3fs.S3FileSystem``.
    """
    opts = dict(storage_options or {})
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    for name in ("endpoint_url", "region_name"):
        value = opts.pop(name, None)
        if value:
            client_kwargs[name] = str(value)
    for alias, name in _S3_ALIASES.items():
        value = opts.pop(alias, None)
        if value is not None and opts.get(name) is None:
            opts[name] = value
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    # Fail fast on an endpoint that does not answer: botocore's and s3fs's own retries multiply with the
    # job's (cluster.source.storage_retry); the defaults took ~40 s to give up on a closed port.
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("connect_timeout", 5)
    config.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
    opts["config_kwargs"] = config
    return opts


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem holding ``uri``, and ``uri`` as a path on it.

    Local paths (``~`` expanded, made absolute) and ``file://`` urls give a ``LocalFileSystem``;
    ``s3://`` (and ``s3a://``) give an ``s3fs.S3FileSystem`` built from :func:`s3_options`; any
    other scheme is handed to ``fsspec.core.url_to_fs`` with the options unchanged.
    Filesystem instances are cached by fsspec, so calling this per shard is cheap.

    Args:
        uri: Local path, glob, or ``scheme://bucket/key`` url.
        storage_options: Options from the config (``endpoint_url``, ``key``, ``secret``, ``token``...).

    Returns:
        ``(fs, path)``: the path has no scheme (``bucket/key`` on S3, an absolute path locally).
    """
    protocol = protocol_of(uri)
    if protocol in _LOCAL:
        raw = uri.split("://", 1)[1] if protocol else uri
        path = os.path.abspath(os.path.expanduser(raw))
        return LocalFileSystem(), path.replace(os.sep, "/")
    if protocol in ("s3", "s3a"):
        import s3fs  # imported lazily: pulls in aiobotocore

        fs = s3fs.S3FileSystem(**s3_options(storage_options))
        return fs, fs._strip_protocol(uri)
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    return fs, path


def full_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` as a uri usable with :func:`filesystem`: scheme added on object storage.

    Args:
        fs: The filesystem ``path`` lives on.
        path: A path without scheme, as returned by ``fs.find``/``fs.glob``.

    Returns:
        ``s3://bucket/key`` on S3, the plain absolute path for local files.
    """
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)
