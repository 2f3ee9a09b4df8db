"""Milvus' bulk-import REST API (``/v2/vectordb/jobs/import/*``): create, describe, list, find, wait.

The contract (sources in docs/milvus-import.md):

* ``POST {base_url}/v2/vectordb/jobs/import/create`` with ``{"collectionName", "dbName"?,
  "partitionName"?, "files": [[path], ...], "options"?}`` answers ``{"code": 0, "data":
  {"jobId": "..."}}``. Paths are keys in the bucket Milvus itself uses; at most 1024 files
  per job, 16 GiB per file.
* ``POST .../describe`` (named ``get_progress`` before Milvus 2.5) with ``{"jobId"}`` answers the
  job: ``state`` (Pending, PreImporting, Importing, ..., Completed, Failed), ``progress``,
  ``importedRows``, ``totalRows``, ``reason``, and ``details`` per file (``fileName``...).
* ``POST .../list`` with ``{"collectionName"}`` answers ``{"records": [{"jobId", "state",
  "progress", "reason"?}]}``; it does not name the files (describe does).
* Errors: HTTP 200 with a non-zero ``code`` and a ``message`` (HTTP 401 when the token is
  missing or wrong). Codes 1, 2, 4, 8, 12 and 1807 (not ready, unavailable, queue full, rate
  limit, resources, HTTP limiter) are worth retrying; HTTP 429/5xx and connection errors too.
* ``Authorization: Bearer <token>`` (``user:password`` or an API key).
* ``Idempotency-Key`` header on create: Milvus >= 2.6.24 / 3.0.2 returns the original job for a
  key it has seen on the same collection (about 24 h), whatever the files; older servers ignore
  it. A failed job stays bound to its key: import again under a new key.

Every call retries transient failures through :func:`cluster.retry.retry`. A create that is
retried re-sends the same key; unless the server is known to honour keys (``key_honoured``, see
:func:`honours_idempotency_key`), it first looks for a job holding the same files
(:meth:`ImportClient.find_job`), so a lost answer never starts a second job. The token never
appears in logs or exception messages.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from cluster.milvus.errors import (
    BulkImportError,
    ImportApiError,
    ImportJobFailed,
    ImportTimeout,
    redact,
    secrets_of,
)
from cluster.retry import retry

log = logging.getLogger(__name__)

CREATE_PATH = "/v2/vectordb/jobs/import/create"
DESCRIBE_PATH = "/v2/vectordb/jobs/import/describe"
LEGACY_DESCRIBE_PATH = "/v2/vectordb/jobs/import/get_progress"
LIST_PATH = "/v2/vectordb/jobs/import/list"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_FILES_PER_JOB = 1024
MAX_IDEMPOTENCY_KEY_BYTES = 256
SUCCESS_CODES = frozenset({0, 200})  # 0 on the v2 API; some docs show 200
TRANSIENT_CODES = frozenset({1, 2, 4, 8, 12, 1807})
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
STATES = ("pending", "importing", "completed", "failed")
_PROTO_PATHS = re.compile(r'paths:"((?:[^"\\]|\\.)*)"')


def normalize_state(state: object) -> str:
    """Milvus' job state as one of :data:`STATES`.

    ``Completed``/``ImportCompleted`` -> completed, ``Failed``/``ImportFailed`` -> failed,
    ``Pending``/``None``/empty -> pending, any other (PreImporting, Importing, Sorting,
    IndexBuilding, InProgress...) -> importing.
    """
    name = str(state or "").strip().lower()
    if name in ("completed", "importcompleted"):
        return "completed"
    if name in ("failed", "importfailed", "importfailedandcleaned"):
        return "failed"
    if name in ("", "none", "pending", "importpending"):
        return "pending"
    return "importing"


def detail_paths(file_name: str) -> list[str]:
    """The paths in a describe detail's ``fileName``.

    Milvus writes them as a Go slice (``[a/1.parquet b/2.parquet]``), older releases as a
    protobuf text (``id:4498 paths:"a/1.parquet"``). Leading ``/`` are dropped.
    """
    text = file_name.strip()
    quoted = _PROTO_PATHS.findall(text)
    if quoted:
        paths = [re.sub(r"\\(.)", r"\1", q) for q in quoted]
    elif text.startswith("[") and text.endswith("]"):
        paths = text[1:-1].split()
    else:
        paths = [text] if text else []
    return [p.lstrip("/") for p in paths]


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def describe_job(data: Mapping[str, Any], job_id: str = "") -> dict[str, Any]:
    """A describe answer's ``data`` in snake case: job_id, collection, state (see :func:`normalize_state`),
    raw_state, progress, imported_rows, total_rows, reason, files (paths per detail), details."""
    details = [dict(d) for d in data.get("details") or []]
    return {
        "job_id": str(data.get("jobId") or job_id),
        "collection": data.get("collectionName") or "",
        "state": normalize_state(data.get("state")),
        "raw_state": data.get("state") or "",
        "progress": _int(data.get("progress")),
        "imported_rows": _int(data.get("importedRows")),
        "total_rows": _int(data.get("totalRows")),
        "reason": data.get("reason") or "",
        "files": [detail_paths(str(d.get("fileName") or "")) for d in details],
        "details": details,
    }


def honours_idempotency_key(version: str) -> bool:
    """Whether a Milvus server of ``version`` (``v2.6.24``, ``2.6.24-rc1``...) honours ``Idempotency-Key``.

    True from 2.6.24 on the 2.6 line and from 3.0.2; False for older or unparsable versions.
    """
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if not match:
        return False
    v = tuple(int(x) for x in match.groups())
    return v >= (3, 0, 2) or (2, 6, 24) <= v < (3, 0, 0)


def check_idempotency_key(key: str) -> None:
    """Raise ValueError unless ``key`` is printable ASCII of 1..256 bytes (what Milvus accepts)."""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_BYTES or not all(" " <= ch <= "~" for ch in key):
        raise ValueError(f"idempotency key must be 1..{MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters, got "
                         f"{key!r}")


def check_files(files: Sequence[Sequence[str]]) -> list[list[str]]:
    """``files`` as lists of strings, checked: 1..1024 non-empty groups.

    Raises:
        ValueError: No files, an empty group, a non-string path, or more than 1024 files.
    """
    groups = [list(g) for g in files]
    if not groups or any(not g or not all(isinstance(p, str) and p for p in g) for g in groups):
        raise ValueError(f"import files must be non-empty lists of paths, got {files!r}")
    if len(groups) > MAX_FILES_PER_JOB:
        raise ValueError(f"{len(groups)} files in one import job: Milvus takes at most {MAX_FILES_PER_JOB}; split "
                         "them over several jobs")
    return groups


class ImportClient:
    """Client of one Milvus server's import API.

    Args:
        base_url: The server, ``http(s)://host:19530`` (REST shares the gRPC port).
        token: ``user:password`` or API key sent as ``Authorization: Bearer``; None = no auth.
        db_name: Database of the collections; None = the server's default.
        timeout_s: Timeout of one HTTP request.
        session: A ``requests.Session`` to use (default: a new one, closed by :meth:`close`).
        attempts: Tries per call when failures are transient.
        base_delay: First retry delay in seconds, doubled per retry up to ``max_delay``.
        max_delay: Longest delay between tries.
        sleep: Sleep function of the retries (tests pass a fake).
        clock: Monotonic clock for :meth:`find_job` (tests pass a fake).
        key_honoured: The server honours ``Idempotency-Key`` (see :func:`honours_idempotency_key`):
            a retried create just re-sends the key. False (unknown or older server): a retried
            create first looks for a job holding the same files.
        find_wait_s: How long such a look waits for pending jobs to name their files.
    """

    def __init__(self, base_url: str, *, token: str | None, db_name: str | None, timeout_s: float = 30,
                 session: requests.Session | None = None, attempts: int = 5, base_delay: float = 0.5,
                 max_delay: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, key_honoured: bool = False,
                 find_wait_s: float = 60.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"import API base url must be http(s)://host:port, got {redact(base_url)!r}")
        self.base_url = base_url.rstrip("/")
        self.db_name = db_name or None
        self.timeout_s = timeout_s
        self._token = token or None
        self._secrets = secrets_of(self._token)
        self._own_session = session is None
        self._session = session or requests.Session()
        self._attempts, self._base_delay, self._max_delay = attempts, base_delay, max_delay
        self._sleep, self._clock = sleep, clock
        self._describe_path = DESCRIBE_PATH
        self.key_honoured, self.find_wait_s = key_honoured, find_wait_s

    def __repr__(self) -> str:
        return f"ImportClient({redact(self.base_url, self._secrets)!r}, db_name={self.db_name!r})"

    def close(self) -> None:
        """Close the HTTP session (if this client made it)."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> ImportClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the API -------------------------------------------------------------------------------------------

    def create(self, collection: str, files: Sequence[Sequence[str]], *, idempotency_key: str,
               partition: str | None = None, options: Mapping[str, str] | None = None) -> str:
        """Start an import job of ``files`` into ``collection``; returns its job id.

        The ``Idempotency-Key`` header is always sent. When a try fails transiently, the next
        one re-sends it; unless ``key_honoured``, it first looks for a job of this collection
        holding exactly these files (:meth:`find_job`) and returns it instead of creating another.

        Args:
            collection: Target collection.
            files: Bucket-relative paths, one list per file (at most 1024).
            idempotency_key: Printable ASCII, at most 256 bytes; the same for every retry of the
                same import, a new one to import files again after a failed job.
            partition: Target partition (default partition when None).
            options: Import options (e.g. ``{"timeout": "300s"}``).

        Raises:
            ValueError: Bad files or key (before any request).
            ImportApiError: The server refused the job, or retries ran out (whether a job started is
                unknown: look for it with :meth:`find_job`, or re-send the same key).
        """
        groups = check_files(files)
        check_idempotency_key(idempotency_key)
        body: dict[str, Any] = {"collectionName": collection, "files": groups}
        if self.db_name:
            body["dbName"] = self.db_name
        if partition:
            body["partitionName"] = partition
        if options:
            body["options"] = dict(options)
        tries = 0

        def once() -> str:
            nonlocal tries
            tries += 1
            if tries > 1 and not self.key_honoured:  # the failed try may have created the job, answer lost
                found = self._find_job(collection, groups, self._post, pending_wait_s=self.find_wait_s, poll_s=2.0)
                if found is not None:
                    log.info("import job %s of '%s' already holds these %d file(s): using it", found, collection,
                             len(groups))
                    return found
            data = self._post(CREATE_PATH, body, headers={IDEMPOTENCY_KEY_HEADER: idempotency_key})
            job_id = data.get("jobId")
            if job_id in (None, ""):
                raise ImportApiError(f"import create answered no jobId: {self._clean(str(data))[:200]}")
            return str(job_id)

        try:
            job_id = self._retry(once, f"creating an import job into '{collection}'")
        except ImportApiError as e:
            raise ImportApiError(f"cannot start the import of {len(groups)} file(s) into '{collection}': {e}; check "
                                 "the Milvus uri and token, that the collection exists, and that the files are in the "
                                 "bucket Milvus imports from", code=e.code, http_status=e.http_status) from e
        log.info("import job %s started: %d file(s) into '%s'", job_id, len(groups), collection)
        return job_id

    def describe(self, job_id: str) -> dict[str, Any]:
        """The job's description (see :func:`describe_job`); ``/describe``, or ``/get_progress`` on old servers.

        Raises:
            ImportApiError: Unknown job, or the server cannot be asked.
        """
        try:
            return self._retry(lambda: self._describe(job_id, self._post), f"describing import job {job_id}")
        except ImportApiError as e:
            raise ImportApiError(f"cannot describe import job {job_id}: {e}", code=e.code,
                                 http_status=e.http_status) from e

    def list_jobs(self, collection: str) -> list[dict[str, Any]]:
        """Jobs of ``collection`` the server still knows: job_id, collection, state, progress, reason."""
        return self._retry(lambda: self._list(collection, self._post), f"listing the import jobs of '{collection}'")

    def find_job(self, collection: str, files: Sequence[Sequence[str]], *, pending_wait_s: float = 60.0,
                 poll_s: float = 2.0) -> str | None:
        """The id of a job of ``collection`` whose files are exactly ``files`` and that did not fail, or None.

        For servers that ignore the ``Idempotency-Key``: before creating a job again (say after a
        crash that lost the job id), ask whether one already holds these files. Failed jobs are
        ignored (they imported nothing). A completed match is preferred over a running one. It
        assumes a set of files is imported by one job (file names unique per run and group).
        A job that is still pending names no files yet; such jobs are described again every
        ``poll_s`` for up to ``pending_wait_s`` seconds.

        Raises:
            BulkImportError: A pending job could not be told apart in time (importing now could
                duplicate rows; try again later), or the server cannot be asked.
        """
        groups = check_files(files)
        return self._retry(lambda: self._find_job(collection, groups, self._post, pending_wait_s=pending_wait_s,
                                                  poll_s=poll_s), f"looking for the import job of '{collection}'")

    def wait(self, job_id: str, *, poll_s: float = 10.0, timeout_s: float = 6 * 3600,
             sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None) -> dict[str, Any]:
        """Poll the job until it completes; returns its last description.

        Raises:
            ImportJobFailed: The server describes the job as failed (with its reason; an import is
                atomic, so nothing of it was imported).
            ImportTimeout: It did not finish within ``timeout_s`` (it may still be running on the server).
            ImportApiError: The server could not be asked (whether the job completed is unknown).
        """
        sleep = sleep or self._sleep
        clock = clock or self._clock
        deadline = clock() + timeout_s
        last: tuple[str, int] | None = None
        while True:
            job = self.describe(job_id)
            if job["state"] == "completed":
                log.info("import job %s completed: %d of %d row(s)", job_id, job["imported_rows"], job["total_rows"])
                return job
            if job["state"] == "failed":
                raise ImportJobFailed(
                    f"import job {job_id} into '{job['collection']}' failed: {job['reason'] or 'no reason given'}. "
                    "Nothing of it was imported (a job is atomic); fix the cause and import the files again under a "
                    "new idempotency key", job_id=str(job_id), reason=job["reason"])
            now = clock()
            if now >= deadline:
                raise ImportTimeout(
                    f"import job {job_id} into '{job['collection']}' did not finish in {timeout_s:.0f} s (state "
                    f"{job['raw_state'] or job['state']}, {job['progress']}%); it may still be running on the server: "
                    "check it there before importing these files again (an import inserts: a second one duplicates "
                    "rows)")
            if (job["state"], job["progress"]) != last:
                last = (job["state"], job["progress"])
                log.info("import job %s: %s, %d%%", job_id, job["raw_state"] or job["state"], job["progress"])
            sleep(min(poll_s, max(deadline - now, 0.0)))

    # --- internals -----------------------------------------------------------------------------------------

    def _describe(self, job_id: str, post: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"jobId": str(job_id)}
        if self.db_name:
            body["dbName"] = self.db_name
        try:
            data = post(self._describe_path, body)
        except ImportApiError as e:
            if e.http_status != 404 or self._describe_path == LEGACY_DESCRIBE_PATH:
                raise
            self._describe_path = LEGACY_DESCRIBE_PATH  # a server older than the describe endpoint
            data = post(self._describe_path, body)
        return describe_job(data, str(job_id))

    def _list(self, collection: str, post: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"collectionName": collection}
        if self.db_name:
            body["dbName"] = self.db_name
        records = post(LIST_PATH, body).get("records") or []
        return [{"job_id": str(r.get("jobId", "")), "collection": r.get("collectionName") or collection,
                 "state": normalize_state(r.get("state")), "progress": _int(r.get("progress")),
                 "reason": r.get("reason") or ""} for r in records]

    def _find_job(self, collection: str, groups: list[list[str]], post: Callable[..., dict[str, Any]], *,
                  pending_wait_s: float, poll_s: float) -> str | None:
        want = {p.lstrip("/") for g in groups for p in g}
        jobs = [j for j in self._list(collection, post) if j["state"] != "failed" and j["job_id"]]
        jobs.sort(key=lambda j: (len(j["job_id"]), j["job_id"]), reverse=True)  # newest first (ids grow)
        matches: list[dict[str, Any]] = []
        undecided = [j["job_id"] for j in jobs]
        deadline = self._clock() + pending_wait_s
        while True:
            still: list[str] = []
            for job_id in undecided:
                job = self._describe(job_id, post)
                if job["state"] == "failed":
                    continue
                got = {p for paths in job["files"] for p in paths}
                if not got:
                    still.append(job_id)
                elif got == want:
                    matches.append(job)
            if matches:
                done = [m for m in matches if m["state"] == "completed"]
                return str((done or matches)[0]["job_id"])
            if not still:
                return None
            if self._clock() >= deadline:
                raise BulkImportError(
                    f"cannot tell whether import job(s) {', '.join(still)} of '{collection}' hold these files: they "
                    f"name no files yet after {pending_wait_s:.0f} s; importing now could load the rows twice, so "
                    "try again once they have started")
            undecided = still
            self._sleep(poll_s)

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return retry(fn, what=what, attempts=self._attempts, base_delay=self._base_delay, max_delay=self._max_delay,
                     sleep=self._sleep, is_transient=lambda e: isinstance(e, ImportApiError) and e.transient,
                     describe=lambda e: self._clean(f"{type(e).__name__}: {e}"), logger=log)

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets)

    def _post(self, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One request; returns the response's ``data`` or raises :class:`ImportApiError`."""
        sent = {"Content-Type": "application/json", "Accept": "application/json", **dict(headers or {})}
        if self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        where = f"POST {path}"
        try:
            resp = self._session.post(self.base_url + path, json=dict(body), headers=sent, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise ImportApiError(self._clean(f"{where}: {type(e).__name__}: {e}"), transient=True) from None
        except requests.RequestException as e:
            raise ImportApiError(self._clean(f"{where}: {type(e).__name__}: {e}")) from None
        status = resp.status_code
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        message = ""
        code = None
        if isinstance(payload, dict):
            code = payload.get("code")
            message = str(payload.get("message") or "")
        if status in (401, 403):
            raise ImportApiError(self._clean(f"{where}: HTTP {status}, not authorized ({message or resp.reason}); "
                                             "check the Milvus token"), code=_int(code) or None, http_status=status)
        if status != 200:
            detail = message or (resp.text or "")[:200]
            raise ImportApiError(self._clean(f"{where}: HTTP {status} {resp.reason}: {detail}"),
                                 code=_int(code) if code is not None else None, http_status=status,
                                 transient=status in TRANSIENT_HTTP or _int(code) in TRANSIENT_CODES)
        if not isinstance(payload, dict) or "code" not in payload:
            raise ImportApiError(self._clean(f"{where}: not a Milvus REST answer: {(resp.text or '')[:200]!r}"),
                                 http_status=status)
        if _int(code) not in SUCCESS_CODES or code is None:
            raise ImportApiError(self._clean(f"{where}: Milvus error {code}: {message or 'no message'}"),
                                 code=_int(code), http_status=status, transient=_int(code) in TRANSIENT_CODES)
        data = payload.get("data")
        return dict(data) if isinstance(data, Mapping) else {}
