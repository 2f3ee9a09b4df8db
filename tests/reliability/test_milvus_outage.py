"""A Milvus server that goes away: back within seconds -> the job finishes; gone -> a clear failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.manifests import recorded
from tests.reliability.conftest import base_config, config_file, run_in_ray, write_parquet_shards
from tests.reliability.test_faults import corpus
from tests.servers import LiteServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Outage(threading.Thread):
    """Kills the server once a shard is recorded; starts it again after ``down_s`` (never when None)."""

    def __init__(self, tmp_path: Path, server: LiteServer, down_s: float | None) -> None:
        super().__init__(daemon=True)
        self.tmp_path, self.server, self.down_s = tmp_path, server, down_s
        self.happened = False  # a test whose outage never came must fail, not pass without one

    def run(self) -> None:
        deadline = time.monotonic() + 600  # only against a hang
        while not recorded(self.tmp_path / "state" / "checkpoints"):
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        self.server.stop()
        self.happened = True
        if self.down_s is not None:
            time.sleep(self.down_s)
            self.server.start()


def outage_after_first_shard(tmp_path: Path, server: LiteServer, down_s: float | None) -> Outage:
    outage = Outage(tmp_path, server, down_s)
    outage.start()
    return outage


def count(server: LiteServer) -> int:
    from pymilvus import MilvusClient

    client = MilvusClient(server.uri)
    try:
        client.load_collection("docs")
        return int(client.query("docs", filter="", output_fields=["count(*)"])[0]["count(*)"])
    finally:
        client.close()


@pytest.fixture()
def setup(tmp_path: Path, small_corpus: list[dict[str, str]],
          tiny_m3_long_dir: Path, ray_local: None) -> Iterator[tuple[list[dict[str, str]], LiteServer, Path]]:
    """12 shards of one-chunk documents, a running milvus-lite server, and a job config writing to it.

    The model is slow without using the CPU (the tiny one, each batch of 4 chunks 1 s late), so that
    the outage comes while most shards are still to be written."""
    rows = corpus(small_corpus, 1)
    src = write_parquet_shards(tmp_path / "docs", rows, 12)
    server = LiteServer(tmp_path / "server-data")
    server.start()
    try:
        sections = base_config(tmp_path, str(src), tiny_m3_long_dir, milvus={"uri": server.uri},
                               cluster={"inject_batch_delay_s": 1.0, "rows_per_task": 4},
                               checkpoint={"record_every_s": 1})
        yield rows, server, config_file(tmp_path, sections)
    finally:
        server.stop()


def test_writes_retry_through_a_short_outage(tmp_path: Path, setup: tuple[list[dict[str, str]], LiteServer, Path]) \
        -> None:
    rows, server, cfg = setup
    outage = outage_after_first_shard(tmp_path, server, down_s=4)
    code, summary, log = run_in_ray(cfg, tmp_path, "outage")
    outage.join(timeout=60)
    assert outage.happened, "the server was never stopped: no outage was tested"
    assert code == 0, log[-3000:]
    assert summary["rows_written"] == len(rows) and summary["shards_done"] == 12
    assert count(server) == len(rows)


def test_a_permanent_outage_fails_clearly_and_the_rerun_resumes(
        tmp_path: Path, setup: tuple[list[dict[str, str]], LiteServer, Path]) -> None:
    rows, server, cfg = setup
    sections = yaml.safe_load(cfg.read_text())
    sections["milvus"]["outage_s"] = 3  # give up sooner: this test is about what happens then
    cfg.write_text(yaml.safe_dump(sections))
    outage = outage_after_first_shard(tmp_path, server, down_s=None)
    code, summary, log = run_in_ray(cfg, tmp_path, "down")
    outage.join(timeout=60)
    assert outage.happened, "the server was never stopped: no outage was tested"
    assert code == 1 and summary["failed"] is True and summary["shards_done"] >= 1
    assert "the run failed" in log and "Milvus" in log
    n_recorded = len(recorded(tmp_path / "state" / "checkpoints"))
    assert 1 <= n_recorded < 12
    server.start()
    code, summary, log = run_in_ray(cfg, tmp_path, "after")
    assert code == 0, log[-3000:]
    assert summary["shards_skipped"] == n_recorded and count(server) == len(rows)
