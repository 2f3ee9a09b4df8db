"""The one retry loop of the job: exponential backoff with jitter around a call that may fail for passing reasons.

Each caller says what counts as transient (object storage, Milvus, the import REST API); the
loop, the backoff and the log line are the same everywhere.

Example:
    >>> retry(lambda: 42, what="answer", is_transient=lambda e: False)
    42
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def retry(
    fn: Callable[[], T],
    *,
    what: str,
    is_transient: Callable[[BaseException], bool],
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 10.0,
    jitter: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    describe: Callable[[BaseException], str] | None = None,
    logger: logging.Logger | None = None,
    for_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn()``, retrying transient failures with exponential backoff.

    Args:
        fn: The operation; called with no arguments.
        what: Short description for log lines (e.g. ``"listing s3://bucket/docs"``); never put
            credentials in it.
        is_transient: Whether an exception is worth retrying.
        attempts: Total number of calls before giving up (>= 1).
        base_delay: Delay before the first retry, in seconds, doubled after each retry.
        max_delay: Upper bound of one delay, in seconds.
        jitter: Shorten each delay by a random share of up to half.
        sleep: Sleep function (tests pass a fake).
        describe: Turns an exception into the text logged (e.g. with secrets redacted); default
            ``"<type>: <message>"``.
        logger: Where retries are logged; default this module's logger.
        for_s: Retry for this long instead of a number of times (``attempts`` is then ignored): a
            transient failure is retried while less than ``for_s`` seconds passed since the first call.
        clock: Monotonic clock for ``for_s`` (tests pass a fake).

    Returns:
        What ``fn`` returns.

    Raises:
        Exception: The last exception, unchanged, when it is not transient or attempts ran out
            (callers wrap it with what to do).
    """
    attempts = max(1, attempts)
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            delay = min(max_delay, base_delay * 2 ** min(attempt - 1, 30))
            delay = delay * (0.5 + random.random() / 2) if jitter else delay
            if for_s is None:
                if attempt >= attempts:
                    raise
                of = f"{attempt}/{attempts}"
            else:
                spent = clock() - started
                if spent >= for_s:
                    raise
                delay = min(delay, max(0.0, for_s - spent))
                of = f"{attempt}, {spent:.0f} of {for_s:.0f} s"
            detail = describe(e) if describe else f"{type(e).__name__}: {e}"
            (logger or log).warning("%s failed (attempt %s, retrying in %.1f s): %s", what, of, delay, detail)
            sleep(delay)
