"""What stops a run before any work: exit code 2 and a message that names the problem and the fix.

Unreachable S3 and unreachable Milvus are both "could not start" (2), S3 within about 10 s; a
damaged manifest object is named with how to recover; a relative checkpoint.uri is refused when
the driver joins a Ray cluster; a stale lease (its holder's process is gone) is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.jobs.conftest import write_config


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sections(tmp_path: Path, model: Path, **extra: object) -> dict[str, object]:
    src = tmp_path / "docs"
    src.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["One document.", "Another one."]}), src / "a.parquet")
    out: dict[str, object] = {"source": {"uri": str(src)}, "model": {"name": str(model), "precision": "fp32"},
                              "milvus": {"uri": str(tmp_path / "m.db"), "collection": "docs"},
                              "checkpoint": {"uri": str(tmp_path / "state")}, "errors": {"uri": None}}
    out.update(extra)
    return out


def start(tmp_path: Path, caplog: pytest.LogCaptureFixture, **cfg: object) -> tuple[int, float, str]:
    from jobs.embed import main

    path = write_config(tmp_path / "job.yaml", **cfg)
    began = time.monotonic()
    with caplog.at_level(logging.INFO):
        code = main(["--config", str(path)])
    return code, time.monotonic() - began, caplog.text


def test_unreachable_s3_and_milvus_both_could_not_start(tmp_path: Path, tiny_m3_dir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    base = sections(tmp_path, tiny_m3_dir)
    s3 = {**base, "source": {"uri": "s3://bucket/docs/",
                             "storage_options": {"endpoint_url": f"http://127.0.0.1:{closed_port()}", "key": "k",
                                                 "secret": "s"}}}
    # Not a speed check: the fail-fast settings (connect_timeout 5, 2 botocore attempts, 4 of the job's)
    # back off ~10 s in all, botocore's defaults ~60 s. Sleeping does not slow down on a loaded machine,
    # so 30 s still tells them apart while leaving the CPU part ~10x room.
    code, took, text = start(tmp_path, caplog, **s3)
    assert code == 2 and took < 30, (code, took)
    assert "cannot start" in text and "listing failed" in text and "Could not connect" in text

    caplog.clear()  # the manifest on that endpoint too: its lease is the first thing the run touches
    code, took, text = start(tmp_path, caplog, **{**s3, "checkpoint": {"uri": "s3://bucket/state"}})
    assert code == 2 and took < 30, (code, took)
    assert "cannot start: checkpoint.uri s3://bucket/state cannot be used" in text and "Could not connect" in text

    caplog.clear()
    milvus = {**base, "milvus": {"uri": f"http://127.0.0.1:{closed_port()}", "collection": "docs"}}
    code, took, text = start(tmp_path, caplog, **milvus)
    assert code == 2 and took < 60, (code, took)  # a refused port fails at once (~3 s); 6x the 10 s connect timeout
    assert "cannot start: Milvus is unreachable" in text and "check milvus.uri" in text


def test_a_damaged_manifest_object_is_named_with_the_way_out(tmp_path: Path, tiny_m3_dir: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from cluster.manifest import Manifest, Store, job_identity
    from jobs.config import load_config

    cfg = sections(tmp_path, tiny_m3_dir)
    path = write_config(tmp_path / "job.yaml", **cfg)
    manifest = Manifest(Store(str(tmp_path / "state")), job_identity(load_config(path)))
    damaged = tmp_path / "state" / manifest.key / "shards" / "0123.json"
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_text('{"path": "/docs/a.parquet", "size": 1')  # cut off mid-write by an older version
    code, _, text = start(tmp_path, caplog, **cfg)
    assert code == 2
    assert str(damaged) in text and "is not valid JSON" in text and "delete it and run again" in text


def test_a_relative_checkpoint_is_refused_when_joining_a_cluster(tmp_path: Path, tiny_m3_dir: Path,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    import jobs.cli

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a cluster; never contacted: refused before
    touched: list[str] = []  # refused before any work (no plan: model, Milvus, lease) and before Ray, not "fast"
    monkeypatch.setattr(jobs.cli, "plan_or_exit_code", lambda *a, **k: touched.append("plan") or 1)
    monkeypatch.setattr(ray, "init", lambda *a, **k: touched.append("ray.init"))
    cfg = sections(tmp_path, tiny_m3_dir, checkpoint={"uri": "embed-state/checkpoints"})
    code, _, text = start(tmp_path, caplog, **cfg)
    assert code == 2 and touched == [], (code, touched)
    assert "checkpoint.uri 'embed-state/checkpoints' is a relative path" in text and "s3://" in text


def test_a_live_lease_is_refused_and_a_dead_holders_is_taken_over(tmp_path: Path) -> None:
    from cluster.manifest import Lease, LeaseHeld, Store

    store = Store(str(tmp_path / "leases"))
    holder = Lease(store, "docs-1", {"run_id": "r1", "mode": "full"}, ttl_s=60)
    holder.acquire()
    second = Lease(store, "docs-1", {"run_id": "r2", "mode": "incremental"}, ttl_s=60)
    with pytest.raises(LeaseHeld, match=f"run r1 \\(full mode\\) on host {socket.gethostname()} pid {os.getpid()}"):
        second.acquire()

    # A holder whose process is gone (on this host): taken over at once, with a warning.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = json.loads((tmp_path / "leases" / "docs-1.json").read_text())
    record.update(pid=int(dead.stdout), pid_start="1")
    (tmp_path / "leases" / "docs-1.json").write_text(json.dumps(record))
    second.acquire()
    assert json.loads((tmp_path / "leases" / "docs-1.json").read_text())["run_id"] == "r2"
    assert not holder.renew() and "taken over" in (holder.lost or "")

    # A holder on another host is alive until its heartbeat is older than its ttl.
    now = [time.time()]
    third = Lease(store, "docs-1", {"run_id": "r3"}, ttl_s=60, clock=lambda: now[0])
    record = json.loads((tmp_path / "leases" / "docs-1.json").read_text())
    record.update(host="elsewhere", heartbeat_at=now[0] - 30)
    (tmp_path / "leases" / "docs-1.json").write_text(json.dumps(record))
    with pytest.raises(LeaseHeld):
        third.acquire()
    now[0] += 40
    third.acquire()
    second.release()  # no longer the holder: leaves the lease alone
    assert json.loads((tmp_path / "leases" / "docs-1.json").read_text())["run_id"] == "r3"
    third.release()
    assert not (tmp_path / "leases" / "docs-1.json").exists()


def test_a_dense_type_the_target_cannot_store_or_another_model_is_refused_before_any_work(
        tmp_path: Path, tiny_m3_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    base = sections(tmp_path, tiny_m3_dir)
    code, _, text = start(tmp_path, caplog, **{**base, "milvus": {**base["milvus"], "dense_type": "float16"}})
    assert code == 2 and "milvus-lite stores float32 vectors only" in text and ">= 2.4" in text
    assert not (tmp_path / "m.db").exists() or "created collection" not in text

    # A collection made by one model refuses the same path once its files changed in place.
    model = tmp_path / "model"
    shutil.copytree(tiny_m3_dir, model)
    cfg = {**base, "model": {"name": str(model), "precision": "fp32"}}
    caplog.clear()
    code, _, text = start(tmp_path, caplog, **cfg)
    assert code == 0, text
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    caplog.clear()
    code, _, text = start(tmp_path, caplog, **cfg)
    assert code == 2 and "holds vectors of another model" in text and "jobs.reindex" in text
