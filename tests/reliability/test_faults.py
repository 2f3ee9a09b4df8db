"""Faults the job survives: driver SIGKILL then re-run, an embed actor dying mid-batch."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cluster.contract import chunk_pk
from cluster.milvus.strict import journal_counts
from tests.manifests import recorded, recorded_names
from tests.reliability.conftest import (
    base_config,
    config_file,
    kill_group,
    milvus_pks,
    run_in_ray,
    session_ray_env,
    start_job,
    write_parquet_shards,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def corpus(small_corpus: list[dict[str, str]], copies: int) -> list[dict[str, str]]:
    """Distinct documents (ids suffixed per copy), long handbook excluded to keep runs short."""
    rows = [r for r in small_corpus if r["kind"] != "handbook"]
    return [{**r, "id": f"{r['id']}~{k}"} for k in range(copies) for r in rows]


def test_driver_sigkill_then_rerun_resumes_without_loss_or_duplicates(
        tmp_path: Path, small_corpus: list[dict[str, str]], tiny_m3_long_dir: Path, ray_local: None) -> None:
    rows = corpus(small_corpus, 2)  # 126 one-chunk documents
    src = write_parquet_shards(tmp_path / "docs", rows, 12)
    journal = tmp_path / "journal"  # every upsert request's keys, from every writer of both runs
    # A slow model that leaves the CPU to the rest of the suite: the tiny model, each batch 1 s late.
    cfg = config_file(tmp_path, base_config(tmp_path, str(src), tiny_m3_long_dir,
                                            milvus={"write_journal": str(journal)},
                                            cluster={"inject_batch_delay_s": 1.0, "ship_code": False},
                                            checkpoint={"record_every_s": 1}))
    shards_dir = tmp_path / "state" / "checkpoints"

    # The driver joins the session's Ray, as a driver on a cluster does: its SIGKILL is the fault, not
    # the loss of a Ray of its own (Ray ends the dead driver's actors; a Ray start costs up to a minute here).
    proc = start_job(cfg, tmp_path / "summary-killed.json", tmp_path / "log-killed.txt", session_ray_env())
    try:
        deadline = time.monotonic() + 600  # only against a hang
        while not recorded(shards_dir):
            assert proc.poll() is None, (tmp_path / "log-killed.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-run, as a node failure would
        proc.wait(timeout=30)
    finally:
        kill_group(proc)  # then its orphans (its milvus-lite server), as a restarted pod would be clean
    recorded_before = recorded_names(shards_dir)
    done_before = len(recorded_before)
    assert 1 <= done_before < 12, "the kill came too late to test a resume"

    code, summary, log = run_in_ray(cfg, tmp_path, "resume")  # the restarted driver
    assert code == 0, log[-3000:]
    assert summary["shards_skipped"] == done_before
    assert summary["shards_skipped"] + summary["shards_done"] == 12
    pks = milvus_pks(tmp_path / "milvus.db")
    assert len(pks) == len(set(pks)) == len(rows)
    assert set(pks) == {f"{r['id']}#0" for r in rows}
    # Writes per key, not unique keys: a shard recorded before the kill is never written again; the
    # shards in flight at the kill may be written twice (same keys: upserts), never more.
    writes = journal_counts(str(journal))
    assert set(writes) == {chunk_pk(r["id"], 0) for r in rows}
    for k in range(12):
        counts = {writes[chunk_pk(r["id"], 0)] for r in rows[k::12]}
        assert counts == {1} if f"part-{k:05d}.parquet" in recorded_before else counts <= {1, 2}, (k, counts)


def test_embed_actor_death_mid_batch_is_retried(tmp_path: Path, small_corpus: list[dict[str, str]],
                                               tiny_m3_dir: Path, ray_local: None) -> None:
    rows = corpus(small_corpus, 3)
    src = write_parquet_shards(tmp_path / "docs", rows, 6)
    marker = tmp_path / "actor-died"
    sections = base_config(tmp_path, str(src), tiny_m3_dir, cluster={"inject_actor_exit": str(marker)},
                           batch={"max_tokens": 1024}, chunking={"overlap": 4})
    code, summary, log = run_in_ray(config_file(tmp_path, sections), tmp_path, "actor")
    assert marker.exists(), "the fault was not injected"
    assert code == 0, log[-3000:]
    assert summary["docs_read"] == len(rows) and summary["docs_failed"] == 0
    pks = milvus_pks(tmp_path / "milvus.db")
    assert len(pks) == len(set(pks)) == summary["chunks_embedded"]
    assert {p.split("#")[0] for p in pks} == {r["id"] for r in rows}


