"""Errors of the Milvus side, and the redaction of secrets from messages.

No heavy imports here: the job's driver may catch these errors without loading pymilvus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "***"
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


class SchemaMismatchError(ValueError):
    """An existing collection does not fit the job's configuration (raised before any embedding)."""


class MilvusConnectError(RuntimeError):
    """Milvus (server or milvus-lite) cannot be opened."""


class MilvusWriteError(RuntimeError):
    """Rows could not be written to Milvus (a permanent error, or retries exhausted)."""


class BulkImportError(RuntimeError):
    """A bulk_import job could not be started, failed on the server, or did not finish in time.

    The subclasses tell what is known: only :class:`ImportJobFailed` says that a job imported
    nothing (its files may go and its shards be redone); after any other, whether rows landed
    is unknown, so the import group stays recorded and the next run asks again.
    """


class ImportApiError(BulkImportError):
    """A call of the import API failed (unreachable, refused, or an unexpected answer): nothing is known of the job.

    Attributes:
        code: Milvus' error code from the response body, if any.
        http_status: The HTTP status, if a response came.
        transient: Whether the same call may succeed later.
    """

    def __init__(self, message: str, *, code: int | None = None, http_status: int | None = None,
                 transient: bool = False) -> None:
        super().__init__(message)
        self.code, self.http_status, self.transient = code, http_status, transient


class ImportJobFailed(BulkImportError):
    """The server describes the import job as failed: nothing of it was imported (a job is atomic).

    Attributes:
        job_id: The job.
        reason: The server's reason.
    """

    def __init__(self, message: str, *, job_id: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.job_id, self.reason = job_id, reason


class ImportTimeout(BulkImportError):
    """An import job did not finish in time; it may still be running (or done) on the server."""


class ImportPartlyDone(BulkImportError):
    """Of an import group's jobs some completed and some failed: its shards can be neither recorded nor redone."""


def secrets_of(token: str | None) -> list[str]:
    """The strings that must never appear in logs or messages: the token and its password part."""
    found: list[str] = []
    for value in (token,):
        if not value:
            continue
        found.append(value)
        if ":" in value:  # 'user:password': the password alone is secret too
            password = value.split(":", 1)[1]
            if len(password) >= 4:
                found.append(password)
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace each secret, and any ``user:password@`` in a URI, by ``***``.

    Args:
        text: A message that may echo a token or a URI with credentials.
        secrets: Literal secrets to remove (longest first is safest; see :func:`secrets_of`).

    Returns:
        The message without the secrets.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _URI_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
