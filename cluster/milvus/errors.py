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
    """A bulk_import job could not be started, failed on the server, or did not finish in time."""


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
