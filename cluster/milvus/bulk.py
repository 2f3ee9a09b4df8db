"""``milvus.mode: bulk_import``: write parquet import files to S3, then have the server import them.

How it runs against a real Milvus server:

1. Each writer (Ray actor) holds a :class:`BulkFileWriter`: rows go through pymilvus'
   ``RemoteBulkWriter`` (parquet; dense as list<float>, sparse as a JSON string
   ``{"indices": [...], "values": [...]}``) and each file is uploaded to
   ``milvus.bulk_uri`` = ``s3://BUCKET/PREFIX`` under ``PREFIX/<uuid>/<n>.parquet``. An open-source
   Milvus imports only from ITS OWN object storage, so BUCKET must be the bucket Milvus is
   configured with (``minio.bucketName`` in milvus.yaml) on the same endpoint; the file paths
   passed to the import are relative to that bucket. ``bulk_storage_options`` (s3fs style:
   ``endpoint_url``, ``key``, ``secret``, ``token``) reach that storage; empty = AWS_* variables.
2. At the end, :meth:`BulkFileWriter.close` returns the uploaded files (one list per file).
3. The driver collects them and calls :func:`run_import`: it posts
   ``/v2/vectordb/jobs/import/create`` to ``milvus.uri`` (the REST API is on the same port as
   gRPC, 19530) with ``milvus.token`` as the bearer key, and polls
   ``/v2/vectordb/jobs/import/describe`` until the job is Completed (returns its description),
   Failed (raises :class:`BulkImportError` with the server's reason) or the timeout passes.

Imported rows are inserts, not upserts: importing files twice duplicates chunks. milvus-lite
implements no import; the tests read back the files and drive :func:`run_import` with fakes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import urllib3
from minio import Minio
from pymilvus.bulk_writer import BulkFileType, RemoteBulkWriter, bulk_import, get_import_progress

from cluster import contract as C
from cluster.milvus import rows as R
from cluster.milvus.connect import token_of
from cluster.milvus.errors import BulkImportError, redact, secrets_of
from cluster.milvus.schema import CollectionSpec, build_schema
from cluster.settings import MilvusConfig

log = logging.getLogger(__name__)

MB = 1024 * 1024
Transport = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]


def parse_bulk_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)``.

    Raises:
        ValueError: Not an ``s3://`` URI with a bucket.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise ValueError(f"milvus.bulk_uri {uri!r}: expected s3://bucket/prefix (the bucket Milvus imports from)")
    return parsed.netloc, parsed.path.strip("/")


def s3_connect_param(bucket: str, storage_options: Mapping[str, Any]) -> RemoteBulkWriter.S3ConnectParam:
    """The bulk writer's S3 parameters from s3fs-style ``storage_options`` (or AWS_* variables)."""
    opts = dict(storage_options)
    client_kwargs = dict(opts.get("client_kwargs") or {})
    endpoint_url = opts.get("endpoint_url") or client_kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint_url:
        parsed = urlparse(str(endpoint_url))
        endpoint, secure = parsed.netloc or parsed.path, parsed.scheme == "https"
    else:
        endpoint, secure = "s3.amazonaws.com", True
    return RemoteBulkWriter.S3ConnectParam(
        bucket_name=bucket, endpoint=endpoint, secure=secure,
        access_key=opts.get("key") or os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=opts.get("secret") or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=opts.get("token") or os.environ.get("AWS_SESSION_TOKEN"),
        region=client_kwargs.get("region_name") or os.environ.get("AWS_DEFAULT_REGION"))


def check_bucket(param: RemoteBulkWriter.S3ConnectParam, bulk_uri: str) -> None:
    """Fail early (before any embedding) when the bucket of ``bulk_uri`` cannot be reached.

    Raises:
        BulkImportError: The bucket does not exist, or the endpoint / credentials do not work.
    """
    def arg(value: Any) -> Any:  # S3ConnectParam keeps some values in 1-tuples
        return value[0] if isinstance(value, tuple) else value

    try:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=30),
                                   retries=urllib3.Retry(total=2, backoff_factor=0.2))
        client = Minio(endpoint=param._endpoint, access_key=param._access_key, secret_key=param._secret_key,
                       session_token=arg(param._session_token), secure=arg(param._secure), region=arg(param._region),
                       http_client=http)
        exists = client.bucket_exists(bucket_name=param._bucket_name)
    except Exception as e:
        raise BulkImportError(f"cannot reach the bucket of milvus.bulk_uri {bulk_uri} at {param._endpoint}: {e}; "
                              "check milvus.bulk_storage_options (endpoint_url, key, secret)") from e
    if not exists:
        raise BulkImportError(f"the bucket of milvus.bulk_uri {bulk_uri} does not exist at {param._endpoint}: "
                              "use the bucket Milvus imports from (minio.bucketName of the server)")


class BulkFileWriter:
    """Writes rows as parquet import files under ``cfg.bulk_uri`` (same ``write`` contract as MilvusWriter).

    Rows whose ``error`` is non-null are skipped and not counted.

    Args:
        spec: The target collection (its schema decides the file columns).
        cfg: ``milvus`` settings with bulk_uri and bulk_storage_options.
        chunk_mb: Buffered size at which a file is written and uploaded.
        local_dir: Scratch folder for files before upload (default: a new temp folder, removed on close).
    """

    def __init__(self, spec: CollectionSpec, cfg: MilvusConfig, *, chunk_mb: float = 256,
                 local_dir: str | None = None) -> None:
        if not cfg.bulk_uri:
            raise ValueError("milvus.bulk_uri is required for bulk files (s3://bucket/prefix)")
        self.spec, self.cfg = spec, cfg
        bucket, prefix = parse_bulk_uri(cfg.bulk_uri)
        param = s3_connect_param(bucket, cfg.bulk_storage_options)
        check_bucket(param, cfg.bulk_uri)
        self._scratch = None if local_dir else tempfile.mkdtemp(prefix="milvus-bulk-")
        root = os.path.join(local_dir or self._scratch, "files")
        try:
            self._writer = RemoteBulkWriter(schema=build_schema(spec), remote_path=prefix, connect_param=param,
                                            chunk_size=1 << 62, file_type=BulkFileType.PARQUET, local_path=root)
        except Exception as e:
            raise BulkImportError(f"cannot prepare bulk files under {cfg.bulk_uri}: {e}; check "
                                  "milvus.bulk_storage_options (endpoint_url, key, secret)") from e
        # pymilvus flushes full buffers in a thread whose errors are only logged: this class commits
        # itself (chunk_size above is never reached) and checks that each commit uploaded a file.
        self.chunk_bytes = int(chunk_mb * MB)
        self.bucket, self.rows_written = bucket, 0
        self._files: list[list[str]] | None = None

    def write(self, table: pa.Table) -> int:
        """Buffer the rows of ``table`` without an error (files are uploaded as buffers fill); returns their count."""
        if self._files is not None:
            raise RuntimeError("BulkFileWriter is closed")
        C.require_columns("milvus bulk writer", table.column_names, R.needed_columns(self.spec))
        if C.ERROR in table.column_names:
            table = table.filter(pc.is_null(table.column(C.ERROR)))
        if table.num_rows == 0:
            return 0
        for row in R.to_rows(table, self.spec, sparse_as="lists"):
            self._writer.append_row(row)
            if self._writer.buffer_size >= self.chunk_bytes:
                self._commit()
        self.rows_written += table.num_rows
        return table.num_rows

    def _commit(self) -> None:
        before = len(self._writer.batch_files)
        try:
            self._writer.commit()
        except Exception as e:
            raise BulkImportError(f"writing bulk files to {self.cfg.bulk_uri} failed: {e}") from e
        if len(self._writer.batch_files) != before + 1:
            raise BulkImportError(f"a bulk file could not be written or uploaded to {self.cfg.bulk_uri} (see the "
                                  "log above); check milvus.bulk_storage_options and that the bucket exists")

    def close(self) -> list[list[str]]:
        """Write and upload what is buffered; returns the uploaded files (bucket-relative, one list per file)."""
        if self._files is None:
            try:
                if self._writer.buffer_row_count:
                    self._commit()
                self._files = [list(batch) for batch in self._writer.batch_files]
            finally:
                if self._scratch:
                    shutil.rmtree(self._scratch, ignore_errors=True)
        return self._files

    def __enter__(self) -> BulkFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rest_transport(cfg: MilvusConfig) -> Transport:
    """The real transport: ``(call, params) -> response JSON`` over pymilvus' bulk_import REST helpers."""
    url, key, db = cfg.uri.rstrip("/"), token_of(cfg) or "", cfg.db_name or ""

    def call(what: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if what == "create":
            return bulk_import(url=url, api_key=key, db_name=db, **params).json()
        return get_import_progress(url=url, api_key=key, db_name=db, **params).json()

    return call


def run_import(cfg: MilvusConfig, files: Sequence[Sequence[str]], *, collection: str | None = None,
               timeout_s: float = 6 * 3600, poll_s: float = 10.0, transport: Transport | None = None,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Start an import job of ``files`` into the collection and wait until it ends.

    Args:
        cfg: ``milvus`` settings (uri of the server, token, db_name, collection).
        files: Uploaded files, bucket-relative, one list per file (from :meth:`BulkFileWriter.close`).
        collection: Target collection (default ``cfg.collection``).
        timeout_s: Give up waiting after this many seconds (the job keeps running on the server).
        poll_s: Seconds between progress calls.
        transport: ``(call, params) -> response JSON`` with call ``create`` or ``describe``;
            default :func:`rest_transport` (the server's REST API).
        sleep: Sleep function; clock: monotonic clock (tests pass fakes).

    Returns:
        The job's final description (``state`` Completed, ``importedRows``, ...).

    Raises:
        BulkImportError: The job could not be created, failed (with the server's reason), or timed out.
    """
    if cfg.is_lite:
        raise BulkImportError("milvus-lite cannot import files: use milvus.mode upsert, or a Milvus server uri")
    name = collection or cfg.collection
    files = [list(f) for f in files if f]
    if not files:
        raise BulkImportError("no files to import: nothing was written")
    call = transport or rest_transport(cfg)
    secrets = secrets_of(token_of(cfg))
    try:
        created = call("create", {"collection_name": name, "files": files})
        job_id = str(created["data"]["jobId"])
    except Exception as e:
        raise BulkImportError(f"cannot start the import into '{name}' at {redact(cfg.uri, secrets)}: "
                              f"{redact(str(e), secrets)}; check milvus.uri, milvus.token, that the collection "
                              f"exists and that the files are in the bucket Milvus imports from") from e
    log.info("import job %s started: %d file(s) into '%s'", job_id, len(files), name)
    deadline, last_progress = clock() + timeout_s, None
    while True:
        try:
            data = dict(call("describe", {"job_id": job_id})["data"])
        except Exception as e:
            raise BulkImportError(f"cannot read the progress of import job {job_id}: "
                                  f"{redact(str(e), secrets)}") from e
        state = str(data.get("state", "")).lower()
        if state in ("completed", "importcompleted"):
            log.info("import job %s completed: %s rows", job_id, data.get("importedRows", "?"))
            return data
        if state in ("failed", "importfailed"):
            reason = data.get("reason") or "no reason given"
            raise BulkImportError(f"import job {job_id} into '{name}' failed: {reason}")
        if clock() >= deadline:
            raise BulkImportError(f"import job {job_id} into '{name}' did not finish in {timeout_s:.0f} s (state "
                                  f"{data.get('state')!r}, progress {data.get('progress')}%); it may still be "
                                  "running on the server: check it there before importing again (imports insert)")
        if data.get("progress") != last_progress:
            last_progress = data.get("progress")
            log.info("import job %s: %s, %s%%", job_id, data.get("state"), last_progress)
        sleep(poll_s)
