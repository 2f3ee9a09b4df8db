"""Open a Milvus client from :class:`~cluster.settings.MilvusConfig`.

* ``uri`` a local path (``./milvus.db``): milvus-lite, embedded in this process. milvus-lite
  locks its data folder, so only ONE process may open it; several writers (Ray actors) need
  a server: ``milvus-lite server --data-dir DIR --port 19530`` and ``uri: http://host:19530``.
* ``uri`` ``http(s)://host:port``: a Milvus server, with ``token`` and ``db_name``.

The token never appears in logs or exception messages: messages are redacted, and a filter on
the ``pymilvus`` loggers removes it from anything pymilvus logs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pymilvus import MilvusClient

from cluster.milvus.errors import MilvusConnectError, redact, secrets_of
from cluster.settings import MilvusConfig

log = logging.getLogger(__name__)

LITE_SUFFIX = ".db"


class _RedactSecrets(logging.Filter):
    """Removes known secrets from log records of the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            clean = redact(message, sorted(self.secrets, key=len, reverse=True))
            if clean != message:
                record.msg, record.args = clean, None
        return True


_FILTER = _RedactSecrets()


def _guard_logs(secrets: list[str]) -> None:
    """Attach the redacting filter to pymilvus' loggers (handlers of children skip parents' filters)."""
    _FILTER.secrets.update(secrets)
    names = ["pymilvus"] + [n for n in logging.root.manager.loggerDict if n.startswith("pymilvus.")]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def token_of(cfg: MilvusConfig) -> str | None:
    """The token to use: ``milvus.token`` (``jobs.config`` fills it from MILVUS_TOKEN / MILVUS_TOKEN_FILE)."""
    return cfg.token or None


def lite_path(uri: str) -> Path:
    """The milvus-lite data path of a local ``uri`` (must end with ``.db``; parents are created).

    Raises:
        ValueError: The path does not end with ``.db`` (pymilvus only opens such paths with milvus-lite).
    """
    path = Path(uri).expanduser()
    if path.suffix != LITE_SUFFIX:
        raise ValueError(f"milvus.uri {uri!r}: a local milvus-lite path must end with '{LITE_SUFFIX}' "
                         "(e.g. ./out/milvus.db); use http(s)://host:port for a Milvus server")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def connect(cfg: MilvusConfig, *, timeout: float | None = 10.0, dedicated: bool = False) -> MilvusClient:
    """Open a client for ``cfg.uri``.

    Args:
        cfg: The ``milvus`` section of the job's configuration.
        timeout: Seconds to wait for the server to answer the first call.
        dedicated: A connection of its own (pymilvus otherwise shares one per uri and token, idle or not).

    Returns:
        A ``MilvusClient``: embedded milvus-lite for a local path, else connected to the server.

    Raises:
        ValueError: A local path that does not end with ``.db``.
        MilvusConnectError: The server (or milvus-lite) cannot be opened; the message says what to check
            and never contains the token.
    """
    token = token_of(cfg)
    secrets = secrets_of(token)
    _guard_logs(secrets)
    if cfg.is_lite:
        path = lite_path(cfg.uri)
        kwargs: dict[str, object] = {"uri": str(path)}
        where = f"milvus-lite at {path}"
        hint = ("only one process can open a milvus-lite folder: stop the other process, or run "
                "`milvus-lite server --data-dir DIR --port 19530` and set milvus.uri to http://127.0.0.1:19530")
    else:
        kwargs = {"uri": cfg.uri, "token": token or "", "db_name": cfg.db_name or ""}
        where = f"Milvus server {redact(cfg.uri, secrets)}" + (f" (database {cfg.db_name!r})" if cfg.db_name else "")
        hint = "check milvus.uri, that the server is up and reachable, milvus.token / MILVUS_TOKEN and milvus.db_name"
    try:
        client = MilvusClient(timeout=timeout, dedicated=dedicated, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure to open is reported the same way
        detail = redact(f"{type(e).__name__}: {e}", secrets)
        error = MilvusConnectError(f"cannot open {where}: {detail}; {hint}")
        if any(s in str(e) or s in repr(e.args) for s in secrets):
            raise error from None  # the cause echoes the token: do not chain it
        raise error from e
    log.info("connected to %s", where)
    from cluster.milvus.strict import CheckedClient

    return CheckedClient(client, cfg.write_journal)  # type: ignore[return-value]


def is_lite_client(client: MilvusClient) -> bool:
    """True when the client talks to milvus-lite (embedded or ``milvus-lite server``)."""
    try:
        version = str(client.get_server_version())
    except Exception:  # noqa: BLE001 - an old server without the call is not lite
        return False
    return "lite" in version.lower()
