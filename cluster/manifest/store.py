"""Small objects on a local disk or S3, written atomically: the storage under the manifest and the lease.

* ``put``: local files are written to a temporary name and renamed over the target (a kill
  mid-write leaves the old object or the new one, never half of one); on S3 one PUT replaces the
  whole object.
* ``create``: only if absent (local ``O_EXCL`` link; S3 ``If-None-Match: *``).
* ``swap``: replace only if the object is still the version read (local: a lock file around
  read-compare-rename; S3 ``If-Match: <etag>``).
* A JSON object that does not parse raises :class:`ManifestCorrupt`, naming the object and how
  to recover; nothing is ever silently ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from embedder.storage import filesystem, full_path


class ManifestCorrupt(RuntimeError):
    """A manifest object exists but cannot be read; the message names it and says how to recover."""


class StoreUnreachable(RuntimeError):
    """The manifest's storage cannot be used at all (no connection, no bucket, no permission)."""


class Store:
    """Objects under one root folder or ``s3://bucket/prefix``.

    Args:
        uri: Local folder or ``s3://bucket/prefix``.
        storage_options: s3fs options (endpoint_url, key, secret, ...).
    """

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.fs, root = filesystem(uri, storage_options)
        self.root = root.rstrip("/")
        self.local = full_path(self.fs, self.root) == self.root
        self.storage_options = dict(storage_options or {})
        self.uri = uri.rstrip("/")

    def path(self, rel: str) -> str:
        """The filesystem path of ``rel`` (no scheme)."""
        return f"{self.root}/{rel}" if rel else self.root

    def uri_of(self, rel: str) -> str:
        """``rel`` as a uri for messages and for readers on other nodes."""
        return full_path(self.fs, self.path(rel))

    def child(self, rel: str) -> Store:
        """A store rooted at ``rel`` below this one (same filesystem and options)."""
        sub = Store.__new__(Store)
        sub.fs, sub.root, sub.local = self.fs, self.path(rel), self.local
        sub.storage_options, sub.uri = self.storage_options, f"{self.uri}/{rel}"
        return sub

    # ---- reading ---------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        self._invalidate(rel)
        return bool(self.fs.exists(self.path(rel)))

    def get_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            return bytes(self.fs.cat_file(self.path(rel)))
        except FileNotFoundError:
            return None

    def get_json(self, rel: str) -> Any:
        """The parsed JSON object, or None when it does not exist.

        Raises:
            ManifestCorrupt: The object exists but is not valid JSON.
        """
        data = self.get_bytes(rel)
        return None if data is None else self._parse(rel, data)

    def get_json_versioned(self, rel: str) -> tuple[Any, str | None]:
        """``(object, version)`` for :meth:`swap`; ``(None, None)`` when absent."""
        if self.local:
            data = self.get_bytes(rel)
            return (None, None) if data is None else (self._parse(rel, data), "local")
        for _ in range(5):  # the etag read before and after the body must agree
            try:
                before = self.fs.info(self.path(rel), refresh=True).get("ETag")
                data = self.get_bytes(rel)
                after = self.fs.info(self.path(rel), refresh=True).get("ETag")
            except FileNotFoundError:
                return None, None
            if data is None:
                return None, None
            if before == after:
                return self._parse(rel, data), before
        raise ManifestCorrupt(f"{self.uri_of(rel)} keeps changing while it is read; is another run writing it?")

    def _parse(self, rel: str, data: bytes) -> Any:
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestCorrupt(
                f"manifest object {self.uri_of(rel)} is not valid JSON ({e}); it was damaged outside the job. "
                f"To recover: delete it and run again (for a shard record, that shard is embedded again; "
                f"upserts keep rows unique), or delete the whole folder {self.uri} to start over") from e

    def list(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Names (not paths) of the objects directly under ``rel_dir`` ending with ``suffix``, sorted."""
        self._invalidate(rel_dir)
        try:
            entries = self.fs.ls(self.path(rel_dir), detail=False)
        except FileNotFoundError:
            return []
        names = (e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith(".tmp-"))

    # ---- writing ---------------------------------------------------------------------------------
    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write the whole object atomically."""
        path = self.path(rel)
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def put_json(self, rel: str, obj: Any) -> None:
        self.put_bytes(rel, _dump(obj))

    def create_json(self, rel: str, obj: Any) -> bool:
        """Write ``obj`` only if ``rel`` does not exist; False when it does."""
        data, path = _dump(obj), self.path(rel)
        if not self.local:
            try:
                self.fs.pipe_file(path, data, mode="create")
            except Exception as e:  # noqa: BLE001 - s3fs maps 412 Precondition Failed to various errors
                if _precondition_failed(e):
                    return False
                raise
            return True
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # atomic, fails if the target exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def swap_json(self, rel: str, obj: Any, version: str | None, check: Any = None) -> bool:
        """Replace ``rel`` by ``obj`` only if it is still the version read (:meth:`get_json_versioned`).

        Locally the version is checked by ``check(current) -> bool`` under a lock file; on S3 by the etag.
        Returns False when another writer changed it first.
        """
        data, path = _dump(obj), self.path(rel)
        if not self.local:
            try:
                self.fs.pipe_file(path, data, IfMatch=version)
            except Exception as e:  # noqa: BLE001
                if _precondition_failed(e) or isinstance(e, FileNotFoundError):
                    return False
                raise
            return True
        with self._locked(rel):
            current = self.get_json(rel)
            if current is None or (check is not None and not check(current)):
                return False
            self.put_bytes(rel, data)
            return True

    def delete(self, rel: str) -> None:
        """Remove the object (no error when it is already gone)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(rel))

    @contextlib.contextmanager
    def _locked(self, rel: str) -> Iterator[None]:
        lock_path = self.path(rel) + ".lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _invalidate(self, rel: str) -> None:
        if not self.local:
            self.fs.invalidate_cache(self.path(rel))


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}


def _precondition_failed(error: BaseException) -> bool:
    """A conditional write lost its condition: HTTP 412 (or S3's 409 ConditionalRequestConflict), read from
    the botocore response in the error's chain (s3fs wraps it in an OSError), never from message text."""
    current: BaseException | None = error
    while current is not None:
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = (response.get("Error") or {}).get("Code")
            if status == 412 or code in _CONFLICT_CODES:
                return True
        current = current.__cause__ or current.__context__
    return False
