"""Point a readers' alias at a collection atomically, roll it back, drop what retention allows.

Every call goes through :class:`RetryingClient` (see :func:`open_retrying`): a call that fails for
a passing reason (a dropped connection, "Too many pings" GOAWAY from an idle pooled connection, a
restarting server) is retried with backoff on a fresh connection, for up to ``milvus.outage_s``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class RetryingClient:
    """A Milvus client whose every call is retried on transient errors (:func:`cluster.milvus.writer.is_transient`).

    The client is opened on the first call; after a transient failure it is closed and a fresh one
    is opened for the next try (a connection the server dropped is not used again). Failing to
    reopen counts as transient; failing to open the first time does not (a wrong uri fails at once).

    Args:
        open_client: Opens a new client (e.g. ``connect(cfg, dedicated=True)``).
        for_s: Retry a call for this long before giving up (the last error is raised unchanged).
        base_delay: Seconds before the first retry, doubled each time up to ``max_delay``.
        describe: Turns an exception into the text logged (secrets redacted).
        sleep: Sleep function (tests pass a fake).
    """

    def __init__(self, open_client: Callable[[], Any], *, for_s: float = 300.0, base_delay: float = 0.5,
                 max_delay: float = 15.0, describe: Callable[[BaseException], str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._open, self._for_s, self._base, self._max = open_client, for_s, base_delay, max_delay
        self._describe, self._sleep = describe, sleep
        self._client: Any = None
        self._opened = False
        self.retries = 0  # transient failures retried, over every call

    def _transient(self, error: BaseException) -> bool:
        from cluster.milvus.errors import MilvusConnectError
        from cluster.milvus.writer import is_transient

        return is_transient(error) or (self._opened and isinstance(error, MilvusConnectError))

    def _once(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._client is None:
            self._client = self._open()
            self._opened = True
        try:
            return getattr(self._client, name)(*args, **kwargs)
        except Exception as e:
            if self._transient(e):
                self._discard()
            raise

    def _discard(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as e:  # noqa: BLE001 - a broken connection may not close cleanly
                log.debug("closing a failed Milvus client: %s", e)

    def _sleep_counted(self, delay: float) -> None:
        self.retries += 1
        self._sleep(delay)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<name>(*args, **kwargs)``, retried on transient errors."""
        from cluster.retry import retry

        return retry(functools.partial(self._once, name, args, kwargs), what=f"Milvus {name}",
                     is_transient=self._transient, for_s=self._for_s, base_delay=self._base, max_delay=self._max,
                     sleep=self._sleep_counted, describe=self._describe, logger=log)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self.call, name)

    def close(self) -> None:
        self._discard()

    def __enter__(self) -> RetryingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_retrying(cfg: Any, **kwargs: Any) -> RetryingClient:
    """A :class:`RetryingClient` on ``cfg`` (a MilvusConfig): fresh dedicated connections, never a pooled idle one,
    retried for ``cfg.outage_s``."""
    from cluster.milvus.connect import connect, token_of
    from cluster.milvus.errors import redact, secrets_of

    secrets = secrets_of(token_of(cfg))

    def describe(e: BaseException) -> str:
        return redact(f"{type(e).__name__}: {getattr(e, 'message', None) or e}", secrets)

    kwargs.setdefault("for_s", float(getattr(cfg, "outage_s", 300.0)))
    return RetryingClient(lambda: connect(cfg, dedicated=True), describe=describe, **kwargs)


def alias_target(client: Any, alias: str) -> str | None:
    """The collection ``alias`` points at, or None when the alias does not exist."""
    if alias not in client.list_aliases().get("aliases", []):
        return None
    return str(client.describe_alias(alias)["collection_name"])


def alias_targets(client: Any) -> dict[str, str]:
    """Every alias of the database and the collection it points at."""
    out = {}
    for alias in client.list_aliases().get("aliases", []):
        out[str(alias)] = str(client.describe_alias(alias)["collection_name"])
    return out


def point_alias(client: Any, alias: str, collection: str) -> str | None:
    """Move (or create) ``alias`` to ``collection`` in one server-side step; returns the previous target.

    Readers that query the alias see either the old or the new collection, never an error:
    Milvus swaps the alias atomically.
    """
    if client.has_collection(alias) and alias_target(client, alias) is None:
        raise ValueError(f"milvus.alias {alias!r} is the name of a real collection; choose another alias")
    previous = alias_target(client, alias)
    client.load_collection(collection)
    try:
        if previous is None:
            client.create_alias(collection, alias)
        elif previous != collection:
            client.alter_alias(collection, alias)
    except Exception:
        # A retried create/alter whose first try did reach the server fails as "already exists":
        # what counts is where the alias points now.
        if alias_target(client, alias) != collection:
            raise
    log.info("alias %s -> %s (was %s)", alias, collection, previous)
    return previous


def drop_collections(client: Any, names: list[str], protect: set[str]) -> list[str]:
    """Drop ``names`` except the protected ones; returns what was dropped."""
    dropped = []
    for name in names:
        if name in protect or name in dropped or not client.has_collection(name):
            continue
        client.release_collection(name)
        client.drop_collection(name)
        dropped.append(name)
    return dropped
