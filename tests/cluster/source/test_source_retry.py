"""retry() and is_transient(): which storage errors are retried, and the backoff."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from s3fs.errors import translate_boto_error

from cluster.settings import SourceConfig
from cluster.source import is_transient, list_shards, retry
from cluster.source import storage_retry as retry_module


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize("exc", [
    ConnectionResetError(), TimeoutError(), OSError(errno.EBUSY, "slow down"),
    EndpointConnectionError(endpoint_url="http://x"), ReadTimeoutError(endpoint_url="http://x"),
    client_error("SlowDown", 503), client_error("InternalError", 500), client_error("Whatever", 502),
    translate_boto_error(client_error("ServiceUnavailable", 503)),
    translate_boto_error(client_error("InternalError", 500)),
    caused(RuntimeError("wrapped"), ConnectionAbortedError()),
])
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    FileNotFoundError("gone"), PermissionError("denied"), ValueError("bad"), OSError(errno.EINVAL, "bad"),
    client_error("AccessDenied", 403), client_error("NoSuchKey", 404),
    translate_boto_error(client_error("AccessDenied", 403)),
    caused(PermissionError("denied"), ConnectionResetError()),
])
def test_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_retry_backs_off_then_succeeds() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert retry(flaky, what="t", attempts=4, base_delay=1.0, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


def test_retry_gives_up_and_raises_last_error() -> None:
    sleeps: list[float] = []

    def down() -> None:
        raise TimeoutError("still down")

    with pytest.raises(TimeoutError, match="still down"):
        retry(down, what="t", attempts=3, sleep=sleeps.append)
    assert len(sleeps) == 2


def test_retry_does_not_retry_permanent_errors() -> None:
    calls: list[int] = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        retry(missing, what="t", sleep=lambda s: None)
    assert calls == [1]


def test_listing_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": 1, "text": "x"}\n')
    monkeypatch.setattr(retry_module, "BASE_DELAY", 0.001)
    from fsspec.implementations.local import LocalFileSystem

    real_info = LocalFileSystem.info
    failures = [ConnectionResetError("reset"), OSError(errno.EBUSY, "SlowDown")]

    def flaky_info(self, path, **kw):
        if failures:
            raise failures.pop(0)
        return real_info(self, path, **kw)

    monkeypatch.setattr(LocalFileSystem, "info", flaky_info)
    assert [s.name for s in list_shards(SourceConfig(uri=str(tmp_path)))] == ["a.jsonl"]
    assert failures == []
