"""A recording HTTP server that follows Milvus' bulk-import REST contract and really imports.

milvus-lite has no import API and no Milvus server with import runs here, so the import
client is tested against this server. It follows the contract in docs/milvus-import.md:

* ``POST /v2/vectordb/jobs/import/create``, ``/describe`` and its older name ``/get_progress``,
  ``/list``; the envelope ``{"code": 0, "data": ...}``; errors as HTTP 200 with a Milvus code and
  message (1801 not JSON, 1802 missing parameter, 1100 invalid parameter, 100 collection not
  found, 800 database not found, 2100 import failed); HTTP 401 with code 1800 when a token is
  configured and the ``Authorization: Bearer`` header does not carry it; 404 for other paths.
* ``dbName`` (absent = ``default``): the server holds one database, ``db_name``.
* ``Idempotency-Key`` (``honour_idempotency_key=True``, Milvus >= 2.6.24 / 3.0.2): a key seen
  before on the same database and collection returns the original job id, whatever the files
  and even when that job failed; a key that is not printable ASCII of at most 256 bytes is code
  1100. With ``False`` the header is ignored and every create starts a job (older Milvus).
* A job reports ``Pending`` on its first describe (no file details yet, as a real job before its
  import tasks exist), ``Importing`` with file details on the next ``steps - 1`` describes, and
  runs at the describe after that: it reads each file from S3 (the bucket it is configured with,
  paths relative to it, as Milvus imports from its own bucket), checks it against the
  collection's schema like Milvus' parquet reader and inserts all rows at once; any problem
  fails the job with a reason and inserts nothing (jobs are atomic).
* Running jobs (``max_running_jobs``, Milvus' ``dataCoord.maxImportJobNum``, 1024): a create while
  that many jobs of the server (any collection) are neither ``Completed`` nor ``Failed`` is
  refused with code 2101 (2100 before 2.6) "The number of jobs has reached the limit, please try
  again later" (``ValidateMaxImportJobExceed``); :attr:`ImportServer.max_running` records the
  most jobs that ran at once.

Checks modelled (the strictest of Milvus 2.5 and 2.6): every field present and no column that
is not a field; arrow types a field accepts (VARCHAR: string; INT32: int8..int32; INT64:
int8..int64; DOUBLE/FLOAT: floats and ints; BOOL: bool; FLOAT_VECTOR: list of float/int, not
fixed_size_list or large_list; SPARSE_FLOAT_VECTOR: a JSON string ``{"indices": [...],
"values": [...]}`` or ``{"<index>": value}``, or a struct of ``indices``/``values`` lists);
nulls only in nullable fields; VARCHAR byte length within max_length; vector dimension; finite
floats; sparse rows non-empty, indices in 0..2^32-2 and unique; files of at most 16 GiB, at most
1024 files per job, ``.parquet`` only (JSON/NumPy/CSV imports are not modelled).

Not modelled: partitions and partition keys, auto-id primary keys, dynamic fields, import
options, queueing and scheduling (every job runs as soon as it is described enough times), the
key's 24 h memory and job retention,
``commit``/``abort``, row-count limits per task, and the server's HTTP status mode
(``standardErrorStatus``).

Fault injection: :meth:`ImportServer.inject` answers the next request(s) to an endpoint with an
HTTP error, before handling them (request lost) or after (answer lost); ``fail_next`` fails the
next job created, ``fail_files`` (file -> reason) any job holding one of those files. :meth:`ImportServer.stop`
and :meth:`ImportServer.start` again on the same port: an API that is unreachable for a while.

Checks for tests: :meth:`ImportServer.imports_per_file` (how many completed jobs imported each
file: more than one is a duplicate import), :meth:`ImportServer.snapshot` (the jobs as plain
values, to compare before and after).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pymilvus import DataType, MilvusClient

from embedder.storage import filesystem

PREFIX = "/v2/vectordb/jobs/import/"
MAX_FILES_PER_JOB = 1024
MAX_IMPORT_JOB_NUM = 1024  # dataCoord.maxImportJobNum
MAX_FILE_BYTES = 16 * 1024**3
MAX_SPARSE_INDEX = 2**32 - 2
INSERT_BATCH = 500


class ImportFailed(Exception):
    """A job's import failed; the message is the reason describe reports."""


@dataclass
class Recorded:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: Any
    time: float
    status: int = 0
    answer: Any = None


@dataclass
class Fault:
    """Answer the next ``times`` requests to ``endpoint`` with ``status``; ``after``: handle them first."""

    endpoint: str
    status: int
    code: int | None
    after: bool
    times: int


@dataclass
class Job:
    """An import job the server holds."""

    job_id: str
    db_name: str
    collection: str
    files: list[list[str]]
    key: str | None
    fail_reason: str | None
    state: str = "Pending"
    describes: int = 0
    progress: int = 0
    reason: str = ""
    imported_rows: int = 0
    total_rows: int = 0
    file_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    create_time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    complete_time: str = ""


class ImportServer:
    """The recording import server (see the module docstring).

    Args:
        milvus: Client of the Milvus the rows go into (e.g. a ``milvus-lite server``).
        s3_options: s3fs-style options of the S3 endpoint holding the files.
        bucket: The bucket file paths are relative to.
        token: When set, requests must carry ``Authorization: Bearer <token>``.
        db_name: The one database served.
        honour_idempotency_key: Behave like Milvus >= 2.6.24 (True) or ignore the key (False).
        steps: Describe calls that report pending/importing before the job runs.
        fail_next: The next created job fails with this reason (then reset to None).
        insert: Insert the rows (False: check the files and count them only).
        max_running_jobs: Jobs neither completed nor failed beyond which a create is refused.
        port: Port to listen on (default: a free one, kept across :meth:`stop` and :meth:`start`).
    """

    def __init__(self, *, milvus: MilvusClient, s3_options: dict[str, Any], bucket: str, token: str | None = None,
                 db_name: str = "default", honour_idempotency_key: bool = True, steps: int = 1,
                 fail_next: str | None = None, insert: bool = True, max_running_jobs: int = MAX_IMPORT_JOB_NUM,
                 port: int = 0) -> None:
        self.milvus, self.bucket, self.token, self.db_name = milvus, bucket, token, db_name
        self.fs, _ = filesystem(f"s3://{bucket}", s3_options)
        self.honour_idempotency_key, self.steps, self.fail_next, self.insert = (
            honour_idempotency_key, steps, fail_next, insert)
        self.max_running_jobs = max_running_jobs
        self.max_running = 0  # most jobs neither completed nor failed at once
        self.fail_files: dict[str, str] = {}  # a job holding one of these files fails with the reason given
        self.port = port
        self.requests: list[Recorded] = []
        self.jobs: dict[str, Job] = {}
        self.keys: dict[tuple[str, str, str], str] = {}
        self.faults: list[Fault] = []
        self._next_id = 457_000_000_000_000_000
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port, "server never started"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ImportServer:
        """Listen (again: on the same port, with the jobs and keys it had)."""
        handler = _handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.port = int(self._server.server_address[1])
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="import-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open (keep-alive) connections: the API is unreachable until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> ImportServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test helpers --------------------------------------------------------------------------------------

    def inject(self, endpoint: str, *, status: int = 503, code: int | None = None, after: bool = False,
               times: int = 1) -> None:
        """Answer the next ``times`` requests to ``endpoint`` (``create``, ``describe``...) with HTTP ``status``.

        ``after=False``: the request is not handled (lost on the way in); ``after=True``: it is
        handled, then the answer is replaced (lost on the way out).
        """
        with self._lock:
            self.faults.append(Fault(endpoint, status, code, after, times))

    def calls(self, endpoint: str) -> list[Recorded]:
        """Recorded requests to ``endpoint`` (``create``, ``describe``, ``get_progress``, ``list``)."""
        with self._lock:
            return [r for r in self.requests if r.path == PREFIX + endpoint]

    def running(self) -> int:
        """Jobs neither completed nor failed."""
        with self._lock:
            return sum(1 for j in self.jobs.values() if j.state not in ("Completed", "Failed"))

    def imports_per_file(self) -> Counter[str]:
        """How many completed jobs imported each file (a file imported twice has loaded its rows twice)."""
        with self._lock:
            return Counter(p for j in self.jobs.values() if j.state == "Completed" for g in j.files for p in g)

    def snapshot(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """The jobs as plain values (job id -> state, files), to compare before and after."""
        with self._lock:
            return {j.job_id: (j.state, tuple(p for g in j.files for p in g)) for j in self.jobs.values()}

    def reset(self, **options: Any) -> None:
        """Forget requests and faults (jobs and keys stay); set options (steps, fail_next...)."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            for name, value in options.items():
                if not hasattr(self, name):
                    raise AttributeError(name)
                setattr(self, name, value)

    # --- request handling ----------------------------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        """Record and answer one POST (header names lower-cased); returns (HTTP status, JSON or text)."""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = Recorded(path=path, headers=headers, body=body, time=time.monotonic())
        with self._lock:
            self.requests.append(record)
            status, answer = self._route(path, headers, raw, body)
            record.status, record.answer = status, answer
        return status, answer

    def _take_fault(self, endpoint: str) -> Fault | None:
        for fault in self.faults:
            if fault.endpoint == endpoint and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    @staticmethod
    def _fault_answer(fault: Fault) -> tuple[int, Any]:
        if fault.code is not None:
            return fault.status, {"code": fault.code, "message": "injected fault"}
        return fault.status, "injected fault: service unavailable"

    def _route(self, path: str, headers: dict[str, str], raw: bytes, body: Any) -> tuple[int, Any]:
        endpoint = path[len(PREFIX):] if path.startswith(PREFIX) else ""
        handlers = {"create": self._create, "describe": self._describe, "get_progress": self._describe,
                    "list": self._list}
        if endpoint not in handlers:
            return 404, "404 page not found"
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"code": 1800, "message": "user hasn't authenticated"}
        fault = self._take_fault(endpoint)
        if fault is not None and not fault.after:
            return self._fault_answer(fault)
        if not raw:
            answer: Any = {"code": 1801, "message": "can only accept json format request, error: EOF"}
        elif not isinstance(body, dict):
            answer = {"code": 1801, "message": "can only accept json format request"}
        else:
            db = body.get("dbName") or "default"
            if db != self.db_name:
                answer = {"code": 800, "message": f"database not found[database={db}]"}
            else:
                answer = handlers[endpoint](body, headers, db)
        if fault is not None:
            return self._fault_answer(fault)
        return 200, answer

    def _create(self, body: dict[str, Any], headers: dict[str, str], db: str) -> dict[str, Any]:
        collection, files = body.get("collectionName"), body.get("files")
        if not collection or files is None:
            return {"code": 1802, "message": "missing required parameters, error: collectionName and files"}
        groups = [g for g in files if g] if isinstance(files, list) else []
        if not groups:
            return {"code": 1100, "message": "invalid parameter[expected=import request is empty]"}
        if not all(isinstance(g, list) and all(isinstance(p, str) for p in g) for g in groups):
            return {"code": 1801, "message": "can only accept json format request: files must be [[path]]"}
        if len(groups) > MAX_FILES_PER_JOB:
            return {"code": 2100, "message": f"importing data failed: The max number of import files should not "
                                             f"exceed {MAX_FILES_PER_JOB}, but got {len(groups)}"}
        for group in groups:
            if len(group) != 1 or not group[0].endswith(".parquet"):
                return {"code": 2100, "message": f"importing data failed: unsupported file type, files={group} "
                                                 "(this server reads one .parquet file per group)"}
        if not self.milvus.has_collection(collection):
            return {"code": 100, "message": f"collection not found[database={db}][collection={collection}]"}
        key = headers.get("idempotency-key")
        if self.honour_idempotency_key and key is not None:
            if not key or len(key.encode()) > 256 or not all(" " <= ch <= "~" for ch in key):
                return {"code": 1100, "message": "invalid parameter[expected=printable ASCII idempotency key of at "
                                                 "most 256 bytes]"}
            known = self.keys.get((db, collection, key))
            if known is not None:
                return {"code": 0, "data": {"jobId": known}}
        if self.running() >= self.max_running_jobs:
            return {"code": 2101, "message": "importing data failed: The number of jobs has reached the limit, please "
                                             "try again later. If your request is set to only import a single file, "
                                             "please consider importing multiple files in one request for better "
                                             "efficiency."}
        self._next_id += 1
        job = Job(job_id=str(self._next_id), db_name=db, collection=collection, files=groups,
                  key=key if self.honour_idempotency_key else None, fail_reason=self.fail_next)
        self.fail_next = None
        self.jobs[job.job_id] = job
        if job.key is not None:
            self.keys[(db, collection, job.key)] = job.job_id
        self.max_running = max(self.max_running, self.running())
        return {"code": 0, "data": {"jobId": job.job_id}}

    def _describe(self, body: dict[str, Any], headers: dict[str, str], db: str) -> dict[str, Any]:
        job_id = body.get("jobId")
        if job_id in (None, ""):
            return {"code": 1802, "message": "missing required parameters, error: jobId"}
        job = self.jobs.get(str(job_id))
        if not str(job_id).lstrip("-").isdigit():
            return {"code": 2100, "message": f"importing data failed: parse job id failed, jobID={job_id}"}
        if job is None or job.db_name != db:
            return {"code": 2100, "message": f"importing data failed: import job does not exist, jobID={job_id}"}
        if job.state not in ("Completed", "Failed"):
            job.describes += 1
            if job.describes <= self.steps:
                job.state = "Pending" if job.describes == 1 else "Importing"
                job.progress = 0 if job.state == "Pending" else min(99, 100 * (job.describes - 1) // self.steps)
            else:
                self._run(job)
        return {"code": 0, "data": self._job_data(job)}

    def _list(self, body: dict[str, Any], headers: dict[str, str], db: str) -> dict[str, Any]:
        collection = body.get("collectionName")
        records = []
        for job in self.jobs.values():
            if job.db_name != db or (collection and job.collection != collection):
                continue
            record = {"jobId": job.job_id, "collectionName": job.collection, "state": job.state,
                      "progress": job.progress}
            if job.reason:
                record["reason"] = job.reason
            records.append(record)
        return {"code": 0, "data": {"records": records}}

    def _job_data(self, job: Job) -> dict[str, Any]:
        data: dict[str, Any] = {
            "jobId": job.job_id, "collectionName": job.collection, "createTime": job.create_time,
            "completeTime": job.complete_time, "state": job.state, "progress": job.progress,
            "importedRows": job.imported_rows, "totalRows": job.total_rows}
        if job.reason:
            data["reason"] = job.reason
        details = []
        if job.state != "Pending":
            task_state = {"Importing": "InProgress"}.get(job.state, job.state)
            for group in job.files:
                stats = job.file_stats.get(group[0], {})
                detail = {"fileName": "[" + " ".join(group) + "]", "fileSize": stats.get("size", 0),
                          "progress": job.progress, "completeTime": job.complete_time, "state": task_state,
                          "importedRows": stats.get("imported", 0), "totalRows": stats.get("rows", 0)}
                if job.reason:
                    detail["reason"] = job.reason
                details.append(detail)
        data["fileSize"] = sum(d["fileSize"] for d in details)
        data["details"] = details
        return data

    # --- the import ----------------------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        """Read, check and insert every file of ``job``; Completed, or Failed with nothing inserted."""
        try:
            if job.fail_reason is not None:
                raise ImportFailed(job.fail_reason)
            for group in job.files:
                if group[0] in self.fail_files:
                    raise ImportFailed(self.fail_files[group[0]])
            if not self.milvus.has_collection(job.collection):
                raise ImportFailed(f"collection not found[collection={job.collection}]")
            fields = [f for f in self.milvus.describe_collection(job.collection)["fields"] if not f.get("auto_id")]
            rows: list[dict[str, Any]] = []
            for group in job.files:
                path = group[0]
                table, size = self._read(path)
                file_rows = check_file(table, fields, path)
                job.file_stats[path] = {"size": size, "rows": len(file_rows), "imported": 0}
                rows.extend(file_rows)
            if self.insert:
                self._insert_all(job.collection, rows, [f for f in fields if f.get("is_primary")][0]["name"])
            for stats in job.file_stats.values():
                stats["imported"] = stats["rows"]
            job.state, job.progress = "Completed", 100
            job.imported_rows = job.total_rows = len(rows)
        except ImportFailed as e:
            job.state, job.reason = "Failed", str(e)
            job.imported_rows = 0
        job.complete_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _read(self, path: str) -> tuple[pa.Table, int]:
        key = f"{self.bucket}/{path.lstrip('/')}"
        try:
            size = int(self.fs.size(key))
        except FileNotFoundError:
            raise ImportFailed(f"failed to get file size of '{path}': the specified key does not exist") from None
        if size > MAX_FILE_BYTES:
            raise ImportFailed(f"The import file size has reached the maximum limit allowed for importing, "
                               f"fileSize={size}, maxSize={MAX_FILE_BYTES}")
        try:
            with self.fs.open(key, "rb") as f:
                return pq.read_table(f), size
        except Exception as e:  # not parquet, truncated...
            raise ImportFailed(f"read parquet file '{path}' failed: {type(e).__name__}: {e}") from None

    def _insert_all(self, collection: str, rows: list[dict[str, Any]], pk: str) -> None:
        done: list[Any] = []
        try:
            for start in range(0, len(rows), INSERT_BATCH):
                batch = rows[start:start + INSERT_BATCH]
                self.milvus.insert(collection, batch)
                done.extend(r[pk] for r in batch)
        except Exception as e:
            if done:
                self.milvus.delete(collection, ids=done)  # a failed job imports nothing
            raise ImportFailed(f"insert into '{collection}' failed: {type(e).__name__}: {e}") from None


# --- checks of a file against the collection's fields --------------------------------------------------------


def _type_ok(dtype: pa.DataType, field_type: DataType, nullable: bool) -> bool:
    if pa.types.is_null(dtype):
        return nullable
    if field_type == DataType.VARCHAR:
        return pa.types.is_string(dtype)
    if field_type == DataType.BOOL:
        return pa.types.is_boolean(dtype)
    if field_type == DataType.INT32:
        return pa.types.is_signed_integer(dtype) and dtype.bit_width <= 32
    if field_type == DataType.INT64:
        return pa.types.is_signed_integer(dtype)
    if field_type in (DataType.DOUBLE, DataType.FLOAT):
        return pa.types.is_floating(dtype) or pa.types.is_signed_integer(dtype)
    if field_type == DataType.FLOAT_VECTOR:
        return pa.types.is_list(dtype) and (pa.types.is_floating(dtype.value_type)
                                            or (pa.types.is_signed_integer(dtype.value_type)
                                                and dtype.value_type.bit_width <= 32))
    if field_type == DataType.SPARSE_FLOAT_VECTOR:
        if pa.types.is_string(dtype):
            return True
        if pa.types.is_struct(dtype):
            names = {dtype.field(i).name: dtype.field(i).type for i in range(dtype.num_fields)}
            idx, val = names.get("indices"), names.get("values")
            return (idx is not None and val is not None and pa.types.is_list(idx) and pa.types.is_list(val)
                    and pa.types.is_integer(idx.value_type) and pa.types.is_floating(val.value_type))
        return False
    return False


def _sparse_row(value: Any, name: str) -> dict[int, float]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ImportFailed(f"Invalid JSON string for SparseFloatVector: '{value[:80]}'") from None
    if not isinstance(value, dict):
        raise ImportFailed(f"Invalid SparseFloatVector in field '{name}': {str(value)[:80]}")
    if "indices" in value or "values" in value:
        indices, values = value.get("indices"), value.get("values")
        if not isinstance(indices, list) or not isinstance(values, list) or len(indices) != len(values):
            raise ImportFailed(f"Invalid SparseFloatVector in field '{name}': indices and values mismatch")
        pairs = list(zip(indices, values))
    else:
        try:
            pairs = [(int(k), v) for k, v in value.items()]
        except ValueError:
            raise ImportFailed(f"Invalid SparseFloatVector in field '{name}': non-integer index") from None
    if not pairs:
        raise ImportFailed(f"empty sparse vector is not allowed in field '{name}'")
    row: dict[int, float] = {}
    for index, weight in pairs:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_SPARSE_INDEX:
            raise ImportFailed(f"sparse vector index {index!r} out of range 0..{MAX_SPARSE_INDEX} in field '{name}'")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ImportFailed(f"sparse vector value {weight!r} is not a finite number in field '{name}'")
        if index in row:
            raise ImportFailed(f"duplicated sparse vector index {index} in field '{name}'")
        row[index] = float(weight)
    return row


def check_file(table: pa.Table, fields: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The rows of one import file, checked against the collection's ``fields`` as Milvus' parquet reader does.

    Raises:
        ImportFailed: The first problem, worded like Milvus' reason.
    """
    by_name = {f["name"]: f for f in fields}
    for name in table.column_names:
        if name not in by_name:
            raise ImportFailed(f"the field: {name} is not in schema, if it's a dynamic field, please reformat data "
                               f"by bulk_writer (file '{path}')")
    columns: dict[str, list[Any]] = {}
    for f in fields:
        name, ftype, nullable = f["name"], DataType(f["type"]), bool(f.get("nullable"))
        if name not in table.column_names:
            raise ImportFailed(f"no parquet field for milvus field '{name}' (file '{path}')")
        col = table.column(name)
        if not _type_ok(col.type, ftype, nullable):
            raise ImportFailed(f"field '{name}' type mis-match, milvus data type '{ftype.name}', arrow data type "
                               f"get '{col.type}' (file '{path}')")
        values = col.to_pylist()
        if not nullable and col.null_count:
            raise ImportFailed(f"the field '{name}' is not nullable but the file contains null value (file '{path}')")
        params = f.get("params") or {}
        if ftype == DataType.VARCHAR:
            limit = int(params.get("max_length", 65535))
            for v in values:
                if v is not None and len(v.encode()) > limit:
                    raise ImportFailed(f"the length ({len(v.encode())}) of VarChar field '{name}' exceeds max length "
                                       f"({limit}) (file '{path}')")
        elif ftype == DataType.FLOAT_VECTOR:
            dim = int(params.get("dim", 0))
            for v in values:
                if len(v) != dim:
                    raise ImportFailed(f"length of vector is not aligned: expect dim={dim}, got {len(v)} in field "
                                       f"'{name}' (file '{path}')")
                if not all(math.isfinite(x) for x in v):
                    raise ImportFailed(f"value of float vector field '{name}' is NaN or Inf (file '{path}')")
            values = [[float(x) for x in v] for v in values]
        elif ftype == DataType.SPARSE_FLOAT_VECTOR:
            values = [_sparse_row(v, name) for v in values]
        elif ftype in (DataType.DOUBLE, DataType.FLOAT):
            if any(v is not None and not math.isfinite(v) for v in values):
                raise ImportFailed(f"value of field '{name}' is NaN or Inf (file '{path}')")
        columns[name] = values
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())]


def _handler(server: ImportServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:  # the connection was dropped by stop()
                pass

        def _answer(self, status: int, answer: Any) -> None:
            data = (json.dumps(answer) if not isinstance(answer, str) else answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(answer, str) else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = server.handle(self.path, headers, raw)
            self._answer(status, answer)

        def do_GET(self) -> None:  # noqa: N802  (the API is POST only: gin answers 404)
            with server._lock:
                server.requests.append(Recorded(path=self.path, headers={k.lower(): v for k, v in
                                                                         self.headers.items()},
                                                body=None, time=time.monotonic(), status=404))
            self._answer(404, "404 page not found")

    return Handler

