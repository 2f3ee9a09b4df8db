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


def backoff_delays(attempts: int, base_delay: float, max_delay: float, *, jitter: bool = True) -> list[float]:
    """The sleeps between ``attempts`` tries: doubling from ``base_delay`` up to ``max_delay``, jittered down
    by up to half when ``jitter`` (so that many workers retrying together spread out)."""
    delays = []
    for attempt in range(1, attempts):
        delay = min(max_delay, base_delay * 2 ** (attempt - 1))
        delays.append(delay * (0.5 + random.random() / 2) if jitter else delay)
    return delays


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

    Returns:
        What ``fn`` returns.

    Raises:
        Exception: The last exception, unchanged, when it is not transient or attempts ran out
            (callers wrap it with what to do).
    """
    attempts = max(1, attempts)
    delays = backoff_delays(attempts, base_delay, max_delay, jitter=jitter)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if attempt >= attempts or not is_transient(e):
                raise
            delay = delays[attempt - 1]
            detail = describe(e) if describe else f"{type(e).__name__}: {e}"
            (logger or log).warning("%s failed (attempt %d/%d, retrying in %.1f s): %s", what, attempt, attempts,
                                    delay, detail)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
