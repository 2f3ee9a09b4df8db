"""Retrying calls to object storage that fail for passing reasons.

s3fs and botocore already retry single requests a few times; this helper is an outer layer
around whole operations (listing a prefix, opening a shard) with exponential backoff.

An exception counts as *transient* (see :func:`is_transient`) when it, or an exception in its
``__cause__``/``__context__`` chain, is one of:

* ``ConnectionError`` (refused, reset, aborted, broken pipe) or ``TimeoutError``
  (includes ``socket.timeout``, ``asyncio.TimeoutError`` and fsspec's ``FSTimeoutError``);
* an ``OSError`` whose errno is ``EBUSY``, ``EAGAIN`` or ``EREMOTEIO``: how s3fs reports S3
  ``SlowDown``, ``ServiceUnavailable``/503, ``OperationAborted`` and ``InternalError``/500;
* botocore's ``ConnectionError``/``HTTPClientError`` family (endpoint unreachable, connection
  closed, read/connect timeout), ``IncompleteReadError`` and ``ResponseParserError``;
* aiohttp's ``ClientConnectionError``/``ClientPayloadError`` (connection lost mid-body);
* a botocore ``ClientError`` with a throttling or server-side code (``SlowDown``,
  ``Throttling``, ``RequestTimeout``, ``InternalError``, ``ServiceUnavailable``...) or an HTTP
  status of 429 or 5xx.

Never transient, whatever their cause: ``FileNotFoundError``, ``PermissionError``,
``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError`` (missing objects, access
denied, bad credentials), and anything else (``ValueError``, parse errors...).
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from cluster.retry import retry as _retry

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Defaults of :func:`retry` (module attributes, so tests and operators can tune them).
ATTEMPTS = 4
BASE_DELAY = 0.5
MAX_DELAY = 10.0

_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, getattr(errno, "EREMOTEIO", errno.EIO)}
_NEVER_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
}


def _library_transient_types() -> tuple[type[BaseException], ...]:
    """Transient exception types of storage libraries, looked up only if already imported."""
    found: list[type[BaseException]] = []
    botocore_exc = sys.modules.get("botocore.exceptions")
    if botocore_exc is not None:
        for name in ("ConnectionError", "HTTPClientError", "IncompleteReadError", "ResponseParserError"):
            cls = getattr(botocore_exc, name, None)
            if isinstance(cls, type):
                found.append(cls)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        for name in ("ClientConnectionError", "ClientPayloadError", "ServerTimeoutError"):
            cls = getattr(aiohttp, name, None)
            if isinstance(cls, type):
                found.append(cls)
    return tuple(found)


def _transient_client_error(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str((response.get("Error") or {}).get("Code", ""))
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in _TRANSIENT_CODES or status == 429 or (isinstance(status, int) and status >= 500)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` looks like a passing storage or network failure worth retrying.

    Args:
        exc: The exception raised by a storage call.

    Returns:
        Whether retrying the same call later may succeed (see the module docstring for the rules).
    """
    if isinstance(exc, _NEVER_TRANSIENT):
        return False
    library_types = _library_transient_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _NEVER_TRANSIENT):
            return False
        if isinstance(current, (ConnectionError, TimeoutError, *library_types)):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        if _transient_client_error(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int | None = None,
    base_delay: float | None = None,
    max_delay: float | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """:func:`cluster.retry.retry` with the storage rules of :func:`is_transient` and this module's defaults.

    Raises:
        Exception: The last exception, unchanged, when it is not transient or attempts ran out.
    """
    return _retry(fn, what=what, is_transient=is_transient, attempts=ATTEMPTS if attempts is None else attempts,
                  base_delay=BASE_DELAY if base_delay is None else base_delay,
                  max_delay=MAX_DELAY if max_delay is None else max_delay, sleep=sleep or time.sleep, logger=log)
