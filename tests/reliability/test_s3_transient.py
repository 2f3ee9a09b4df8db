"""Transient object-storage errors (HTTP 503 SlowDown) beyond botocore's retries are survived by the job's own.

A proxy in front of the S3 server answers the first requests about each object or prefix with
503 SlowDown: one more than botocore makes attempts for one request (``retries.max_attempts`` in
``s3_options`` of the job's storage module). A 503 to a HEAD has no body, so s3fs does not see
``SlowDown`` and does not retry it either: the HEAD that opening a shard (or listing the prefix)
makes fails in s3fs, and only the outer retry of :mod:`cluster.source.storage_retry` (around
``open_shard`` and ``list_shards``) gets through. Without it the listing or the shards fail.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.source import filesystem
from tests.reliability.conftest import base_config, config_file, milvus_pks, run_in_ray

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


def job_fs(uri: str, endpoint_url: str) -> Any:
    """The s3fs filesystem the job opens for ``uri`` (its options: connect timeout, botocore retries)."""
    fs, _ = filesystem(uri, {"endpoint_url": endpoint_url, "key": "k", "secret": "s"})
    return fs


def botocore_attempts(endpoint_url: str) -> int:
    """Requests botocore makes for one call with the job's s3 options (its ``max_attempts`` counts retries)."""
    retries = job_fs("s3://any-bucket/x", endpoint_url).config_kwargs["retries"]
    return int(retries.get("total_max_attempts") or retries["max_attempts"] + 1)


class SlowDownProxy:
    """An HTTP proxy in front of an S3 endpoint that answers some requests with 503 SlowDown.

    The first ``burst`` requests about each object or prefix (``/bucket/key``: HEAD, GET) fail;
    requests about the bucket itself (``/bucket?list-type=2...``) all pass.
    """

    def __init__(self, upstream: str, burst: int) -> None:
        proxy = self
        self.upstream, self.burst = upstream.rstrip("/"), burst
        self.requests: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                with proxy.lock:
                    proxy.requests[path] += 1
                    fail = "/" in path.strip("/") and proxy.requests[path] <= proxy.burst
                    proxy.failed[path] += int(fail)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                req = urllib.request.Request(proxy.upstream + self.path, data=body or None, method=self.command,
                                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    resp = urllib.request.urlopen(req, timeout=30)
                except urllib.error.HTTPError as e:
                    resp = e
                data = resp.read()
                self.send_response(resp.status if hasattr(resp, "status") else resp.code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                length = resp.headers.get("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_botocore_alone_gives_up_on_the_burst(s3_server: dict[str, Any], s3_bucket: str) -> None:
    """The fault below is beyond botocore's and s3fs's retries: opening a shard through them alone fails."""
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
                           skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/one.bin", b"x")
    attempts = botocore_attempts(str(s3_server["endpoint_url"]))
    proxy = SlowDownProxy(str(s3_server["endpoint_url"]), burst=attempts + 1)
    try:
        with pytest.raises(OSError):
            job_fs(f"s3://{s3_bucket}/one.bin", proxy.url).open(f"{s3_bucket}/one.bin", "rb")
    finally:
        proxy.close()
    assert proxy.failed == {f"/{s3_bucket}/one.bin": attempts}, "s3fs or botocore made other attempts"


def test_reads_through_a_flaky_s3_endpoint(tmp_path: Path, s3_server: dict[str, Any], s3_bucket: str,
                                           small_corpus: list[dict[str, str]], tiny_m3_dir: Path,
                                           ray_local: None) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
                           skip_instance_cache=True)
    rows = [r for r in small_corpus if r["kind"] != "handbook"]
    for k in range(4):
        with fs.open(f"{s3_bucket}/docs/part-{k}.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pylist(rows[k::4]), f)
    burst = botocore_attempts(str(s3_server["endpoint_url"])) + 1
    proxy = SlowDownProxy(str(s3_server["endpoint_url"]), burst=burst)
    try:
        sections = base_config(tmp_path, f"s3://{s3_bucket}/docs/", tiny_m3_dir, batch={"max_tokens": 1024},
                               chunking={"overlap": 4})
        sections["source"]["storage_options"] = {"endpoint_url": proxy.url, "key": "k", "secret": "s"}
        code, summary, log = run_in_ray(config_file(tmp_path, sections), tmp_path, "flaky")
    finally:
        proxy.close()
    assert code == 0, log[-3000:]
    shards = {f"/{s3_bucket}/docs/part-{k}.parquet" for k in range(4)}
    assert proxy.failed[f"/{s3_bucket}/docs"] == burst, "the listing (HEAD of the prefix) missed the fault"
    assert {p: proxy.failed[p] for p in shards} == dict.fromkeys(shards, burst), "a shard missed the fault"
    assert summary["docs_read"] == len(rows) and summary["shards_failed"] == 0
    assert {p.split("#")[0] for p in milvus_pks(tmp_path / "milvus.db")} == {r["id"] for r in rows}
