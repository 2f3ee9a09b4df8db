"""Errors of the source side: a listing that cannot be made, a shard that cannot be read."""

from __future__ import annotations

from cluster.source.storage_retry import is_transient


class SourceError(RuntimeError):
    """The configured source cannot be listed (nothing matches, no access, bad uri)."""


class ShardError(SourceError):
    """One shard cannot be read as a whole (row-level problems never raise this).

    Rows already yielded from the shard before the error stay valid; the shard itself should be
    reported as failed. Picklable, so it crosses Ray process boundaries intact.

    Attributes:
        shard: Path of the shard (with its scheme for object storage, e.g. ``s3://b/part-0.parquet``).
        reason: What is wrong and how to fix it.
        transient: True when the cause looked like a passing storage/network failure, so that
            retrying the shard later may succeed.
    """

    def __init__(self, shard: str, reason: str, transient: bool = False) -> None:
        super().__init__(shard, reason, transient)
        self.shard = shard
        self.reason = reason
        self.transient = transient

    def __str__(self) -> str:
        return f"shard {self.shard}: {self.reason}"


def storage_failure(shard: str, error: BaseException) -> ShardError | None:
    """A ShardError for an error that came from storage rather than from the shard's content.

    Args:
        shard: The shard's path.
        error: The exception raised while opening or reading it.

    Returns:
        The ShardError to raise (missing file, access denied, transient failure), or None when
        ``error`` does not look like a storage problem.
    """
    if isinstance(error, FileNotFoundError):
        return ShardError(shard, "the file no longer exists; list the source again")
    if isinstance(error, PermissionError):
        return ShardError(shard, f"access denied ({error}); check the credentials in source.storage_options "
                                 "or the AWS_* environment variables")
    if is_transient(error):
        return ShardError(shard, f"storage failure, may pass on retry: {type(error).__name__}: {error}",
                          transient=True)
    return None
