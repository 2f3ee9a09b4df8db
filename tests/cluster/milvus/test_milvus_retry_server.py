"""A writer against a ``milvus-lite server`` that is killed and restarted mid-write still writes every row."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pyarrow as pa
import pytest

from cluster.milvus.connect import connect, is_lite_client
from cluster.milvus.schema import CollectionSpec, ensure_collection
from cluster.milvus.writer import MilvusWriter
from cluster.settings import MilvusConfig

pytestmark = pytest.mark.slow


def test_writer_survives_a_server_restart(lite_server, make_batch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cfg = MilvusConfig(uri=lite_server.uri, collection="docs", token="root:Tok3nXyz", write_batch_rows=20)
    client = connect(cfg)
    try:
        assert is_lite_client(client)
        spec = CollectionSpec.from_config(cfg, dense_dim=16, has_sparse=True, metadata={"lang": pa.string(),
                                                                                        "year": pa.int64()})
        ensure_collection(client, spec)
        # A budget of ~75 s: a loaded machine took over 10 s to restart the server (the retries end when it is back)
        writer = MilvusWriter(client, spec, cfg, attempts=40, initial_delay=0.25, max_delay=2.0)
        first_write_done, killed = threading.Event(), threading.Event()

        def restart() -> None:
            first_write_done.wait(30)
            lite_server.stop()  # SIGKILL: no graceful shutdown
            killed.set()
            time.sleep(1.0)  # the writer retries meanwhile
            lite_server.start()

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        total = 0
        for i in range(12):  # 40 rows per batch, 20 per request: 2 requests per write
            total += writer.write(make_batch(40, start=i * 40, seed=i))
            if i == 0:
                first_write_done.set()
                assert killed.wait(30)  # the next write meets a dead server
        writer.flush()
        thread.join(5)
        assert total == 480 and writer.rows_written == 480
        assert writer.retries >= 1, "the kill did not interrupt any request: the test proved nothing"
        res = client.query("docs", filter="", output_fields=["count(*)"], consistency_level="Strong")
        assert res[0]["count(*)"] == 480
        assert "retrying in" in caplog.text and "Tok3nXyz" not in caplog.text
    finally:
        client.close()


def test_permanent_failure_after_retries(lite_server, make_batch) -> None:
    cfg = MilvusConfig(uri=lite_server.uri, collection="docs")
    client = connect(cfg)
    try:
        spec = CollectionSpec.from_config(cfg, dense_dim=16, has_sparse=False)
        ensure_collection(client, spec)
        lite_server.stop()
        writer = MilvusWriter(client, spec, dataclasses.replace(cfg), attempts=2, initial_delay=0.05)
        from cluster.milvus.errors import MilvusWriteError

        with pytest.raises(MilvusWriteError, match=r"still failed after 2 attempts.*is up and reachable"):
            writer.write(make_batch(5, sparse=False, metadata=False))
    finally:
        client.close()
