"""A worker node of a two-node local Ray cluster dies mid-run: the job still finishes, nothing lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.contract import chunk_pk
from cluster.milvus.strict import journal_counts
from tests.conftest import REPO_ROOT
from tests.reliability.conftest import base_config, config_file, job_env, milvus_pks, write_parquet_shards
from tests.reliability.test_faults import corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIVER = textwrap.dedent("""
    import json, subprocess, sys, time
    from pathlib import Path
    from ray.cluster_utils import Cluster
    from tests.manifests import recorded

    cfg, state, summary, log = sys.argv[1:5]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    import os
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    with open(log, "wb") as out:
        job = subprocess.Popen([sys.executable, "-m", "jobs.embed", "--config", cfg, "--summary", summary],
                               env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not recorded(Path(state)) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        removed = job.poll() is None
        if removed:
            cluster.remove_node(worker)  # the node and everything on it die
            cluster.add_node(num_cpus=2)  # the autoscaler would bring a replacement
        code = job.wait(timeout=300)
    print(json.dumps({"code": code, "removed": removed}))
    cluster.shutdown()
""")


def test_job_finishes_when_a_worker_node_dies(tmp_path: Path, small_corpus: list[dict[str, str]],
                                              tiny_m3_long_dir: Path) -> None:
    import json

    rows = corpus(small_corpus, 1)
    src = write_parquet_shards(tmp_path / "docs", rows, 12)
    # The simulated nodes share this machine's /tmp/ray: a shipped working_dir would vanish with the
    # removed node, so the workers import the checkout directly (as on a shared filesystem).
    # A slow model that leaves the CPU to the rest of the suite: the tiny one (every document one chunk),
    # each batch 1 s late, so that the node goes while most shards are still to be embedded.
    journal = tmp_path / "journal"  # the keys of every upsert request, from every writer wherever it ran
    cfg = config_file(tmp_path, base_config(tmp_path, str(src), tiny_m3_long_dir,
                                            cluster={"ship_code": False, "inject_batch_delay_s": 1.0},
                                            checkpoint={"record_every_s": 1}, milvus={"write_journal": str(journal)}))
    summary, log = tmp_path / "summary.json", tmp_path / "log.txt"
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(cfg), str(tmp_path / "state" / "checkpoints"),
                           str(summary), str(log)], cwd=REPO_ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=900)  # only against a hang: above the driver's 240 + 300 s and the cluster's start
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["removed"], "the node was not removed before the job ended"
    assert result["code"] == 0, log.read_text()[-3000:]
    data = json.loads(summary.read_text())
    assert data["shards_done"] == 12 and data["docs_failed"] == 0
    pks = milvus_pks(tmp_path / "milvus.db")
    assert len(pks) == len(set(pks)) == len(rows)
    # Writes per key: each document written, none more than twice (a block lost with the node may be
    # embedded and written again, same key); and the summary counts exactly the writes that happened.
    writes = journal_counts(str(journal))
    assert set(writes) == {chunk_pk(r["id"], 0) for r in rows} and max(writes.values()) <= 2
    assert sum(writes.values()) == data["rows_written"]
