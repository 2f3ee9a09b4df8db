"""SIGTERM and SIGINT end a run through its failure path; a second run on the same target is refused;
progress lines come from a timer, also before the first block is written.

One scenario, to keep the suite short: run 1 (a slow model: the tiny one, each batch 1 s late) logs
progress before any chunk is embedded, refuses a concurrent run 2 by its lease, and is stopped by
SIGTERM; run 3 (joining the session's Ray, as on a cluster) is stopped by SIGINT; run 4 finishes what
is left. No Ray or milvus-lite process outlives a run, and a stopped driver's actors end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest

from cluster.contract import chunk_pk
from cluster.milvus.strict import journal_counts
from tests.manifests import recorded, recorded_names
from tests.reliability.conftest import (
    base_config,
    config_file,
    job_env,
    kill_group,
    milvus_pks,
    run_in_ray,
    run_job,
    session_ray_env,
    start_job,
    write_parquet_shards,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
TICK = re.compile(r"progress: .* \(timer tick (\d+)\)$")


def wait_for(what: str, check, proc, log: Path, timeout: float = 600) -> None:  # noqa: ANN001
    """Poll ``check`` until true; the job ending first fails. The timeout only stops a hang."""
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the job ended before {what}: {log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def stamp(line: str) -> datetime:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f")


def survivors(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a run's Ray temp dir or data folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "pytest" not in cmd:
            found.append(f"{pid}: {cmd[:160]}")
    return found


def assert_no_survivors(*markers: str) -> None:
    deadline = time.monotonic() + 60  # they exit on their own once the driver is gone: slower on a loaded machine
    while any(survivors(m) for m in markers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [s for m in markers for s in survivors(m)]


def assert_cluster_released() -> None:
    """The session's Ray got back every CPU a stopped driver's actors held (Ray ended them)."""
    import ray

    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


def stop_with(proc, sig: int, summary: Path, log: Path) -> dict:  # noqa: ANN001
    proc.send_signal(sig)  # to the driver only, as Kubernetes or Ctrl-C in a terminal would
    try:
        code = proc.wait(timeout=300)  # only against a hang: the stop took over 60 s on a loaded machine
    finally:
        kill_group(proc)
    name = signal.Signals(sig).name
    text = log.read_text(errors="replace")
    assert code == 128 + sig, text[-3000:]
    assert f"{name} received" in text and "Traceback" not in text.split(f"{name} received")[1]
    data = json.loads(summary.read_text())
    assert data["failed"] is True and data["interrupted"] == name
    return data


def test_signals_lease_and_timer_progress(tmp_path: Path, small_corpus: list[dict[str, str]],
                                          tiny_m3_long_dir: Path, ray_local: None) -> None:
    rows = [{**r, "id": f"{r['id']}~{k}"} for k in range(2) for r in small_corpus if r["kind"] != "handbook"]
    src = write_parquet_shards(tmp_path / "docs", rows, 12)
    journal = tmp_path / "journal"  # the keys of every upsert request of every run
    # ship_code matters only to the run that joins the session's Ray (run 3): its workers import this checkout.
    sections = base_config(tmp_path, str(src), tiny_m3_long_dir, checkpoint={"record_every_s": 1},
                           milvus={"write_journal": str(journal)},
                           cluster={"inject_batch_delay_s": 1.0, "ship_code": False})
    cfg = config_file(tmp_path, sections)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = job_env(RAY_TMPDIR=ray_tmp)
    state = tmp_path / "state" / "checkpoints"
    n_recorded = lambda: len(recorded(state))  # noqa: E731
    proc = None
    try:
        # Run 1: progress from the timer before any chunk is embedded; the lease refuses run 2; SIGTERM.
        log1, summary1 = tmp_path / "log-1.txt", tmp_path / "summary-1.json"
        proc = start_job(cfg, summary1, log1, env)
        wait_for("a progress line", lambda: "progress:" in log1.read_text(errors="replace"), proc, log1)
        lines = log1.read_text(errors="replace").splitlines()
        start = next(stamp(ln) for ln in lines if "embedding 12 shard(s)" in ln)
        first = next(ln for ln in lines if "progress:" in ln)
        # The mechanism, not the clock: the first progress line is the timer's first wake-up (the run's
        # closing line has no tick) and was logged while no chunk was embedded yet.
        assert first.endswith("(timer tick 1)"), first
        assert " 0 chunks embedded" in first  # the first batch is still being embedded
        # Not a speed check: the line comes log_every_s (1 s) after the start plus up to 5 s waiting for the
        # read counter actor, more on a loaded machine; 60 s only catches a timer that waits for the pipeline.
        assert (stamp(first) - start).total_seconds() <= 60, first

        code, _, log2 = run_job(cfg, tmp_path, "second", env)
        assert code == 2, log2[-2000:]
        assert "another run holds" in log2 and f"pid {proc.pid}" in log2

        wait_for("a recorded shard", lambda: n_recorded() >= 1, proc, log1)
        data = stop_with(proc, signal.SIGTERM, summary1, log1)
        assert 1 <= data["shards_done"] < 12
        # A line on every wake-up of the timer, from the start to the stop: ticks 1, 2, ... none missing.
        ticks = [int(m.group(1)) for ln in log1.read_text(errors="replace").splitlines() if (m := TICK.search(ln))]
        assert len(ticks) >= 2 and ticks == list(range(1, len(ticks) + 1)), ticks
        assert_no_survivors(ray_tmp, str(tmp_path / "milvus.db"))
        assert not list((state / "leases").glob("*.json")), "the lease was not released"
        recorded_by_1 = recorded_names(state)

        # Run 3 resumes and is stopped by SIGINT (Ctrl-C) once it recorded a shard of its own. Its driver
        # joins the session's Ray as a driver on a cluster does (run 1 showed a Ray of its own ends).
        before = n_recorded()
        log3, summary3 = tmp_path / "log-3.txt", tmp_path / "summary-3.json"
        proc = start_job(cfg, summary3, log3, session_ray_env())
        wait_for("another recorded shard", lambda: n_recorded() > before, proc, log3)
        stop_with(proc, signal.SIGINT, summary3, log3)
        assert_no_survivors(str(tmp_path / "milvus.db"))
        assert_cluster_released()

        # Run 4 (on the session's Ray: how it starts does not matter here) finishes: every document once.
        done_before = n_recorded()
        assert done_before < 12
        code, summary, log4 = run_in_ray(cfg, tmp_path, "4")
        assert code == 0, log4[-3000:]
        assert summary["shards_skipped"] == done_before and summary["shards_done"] == 12 - done_before
        pks = milvus_pks(tmp_path / "milvus.db")
        assert len(pks) == len(set(pks)) == len(rows)
        # Writes per key: a shard recorded when SIGTERM stopped run 1 is never written again by runs 3 and 4.
        writes = journal_counts(str(journal))
        assert set(writes) == {chunk_pk(r["id"], 0) for r in rows}
        for k in range(12):
            counts = {writes[chunk_pk(r["id"], 0)] for r in rows[k::12]}
            assert counts == {1} if f"part-{k:05d}.parquet" in recorded_by_1 else max(counts) <= 3, (k, counts)
    finally:
        if proc is not None and proc.poll() is None:  # a failed assertion must not leave a job running
            kill_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
