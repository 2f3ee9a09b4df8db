"""Helpers for fault tests: corpora sharded many ways, the job as a subprocess, Milvus checks."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import REPO_ROOT
from tests.jobs.conftest import write_config


def write_parquet_shards(folder: Path, rows: list[dict[str, Any]], n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        pq.write_table(pa.Table.from_pylist(rows[k::n]), folder / f"part-{k:05d}.parquet")
    return folder


def base_config(tmp_path: Path, uri: str, model: Path, **extra: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {
        "source": {"uri": uri},
        "model": {"name": str(model), "precision": "fp32"},
        "cluster": {"workers": 1, "cpus_per_worker": 1, "rows_per_task": 16},
        "milvus": {"uri": str(tmp_path / "milvus.db"), "collection": "docs"},
        "checkpoint": {"uri": str(tmp_path / "state" / "checkpoints")},
        "errors": {"uri": str(tmp_path / "state" / "errors")},
        "log_every_s": 1,
    }
    for key, value in extra.items():
        sections.setdefault(key, {}).update(value) if isinstance(value, dict) else sections.__setitem__(key, value)
    return sections


def config_file(tmp_path: Path, sections: dict[str, Any], name: str = "job.yaml") -> Path:
    return write_config(tmp_path / name, **sections)


def job_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a job process starts its own Ray unless ``extra`` names one
    env.update({"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", **extra})
    return env


def session_ray_env(**extra: str) -> dict[str, str]:
    """A job process' environment that joins this test session's Ray (the ``ray_local`` fixture) as a
    driver of its own, as a driver joins a cluster: no Ray start-up of its own (seconds quiet, up to a
    minute on a loaded machine). For faults of the driver process that do not need its own Ray; when
    it dies, Ray ends its job's workers and actors. Give such a job ``cluster.ship_code: false``: the
    session's workers import this checkout already."""
    import ray

    return job_env(RAY_ADDRESS=ray.get_runtime_context().gcs_address, **extra)


def start_job(cfg: Path, summary: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m jobs.embed`` in its own process group (it starts its own local Ray unless ``env`` has a
    ``RAY_ADDRESS``: :func:`session_ray_env`)."""
    out = open(log, "wb")  # noqa: SIM115 - closed by the process' end
    return subprocess.Popen([sys.executable, "-m", "jobs.embed", "--config", str(cfg), "--summary", str(summary)],
                            cwd=REPO_ROOT, env=env or job_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_job(cfg: Path, tmp_path: Path, tag: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> tuple[int, dict[str, Any], str]:
    summary, log = tmp_path / f"summary-{tag}.json", tmp_path / f"log-{tag}.txt"
    proc = start_job(cfg, summary, log, env)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    data = json.loads(summary.read_text()) if summary.exists() else {}
    return code, data, log.read_text(errors="replace")


def run_in_ray(cfg: Path, tmp_path: Path, tag: str) -> tuple[int, dict[str, Any], str]:
    """``jobs.embed`` called in this process, on the session's shared local Ray (the ``ray_local``
    fixture): what :func:`run_job` returns, without a Ray start-up per run. For faults that need no
    process of their own (signals, SIGKILL and Ray's own logs do)."""
    from jobs.embed import main

    summary = tmp_path / f"summary-{tag}.json"
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        code = main(["--config", str(cfg), "--summary", str(summary)])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    data = json.loads(summary.read_text()) if summary.exists() else {}
    return code, data, text.getvalue()


def kill_group(proc: subprocess.Popen[bytes], sig: int = 9) -> None:
    """Kill the process and whatever it started (its local Ray, a milvus-lite server)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def milvus_pks(db: Path, collection: str = "docs") -> list[str]:
    """Every row as ``"<doc_id>#<chunk_index>"`` (readable; each row's real key is checked to be
    ``chunk_pk(doc_id, chunk_index)``, so duplicates here are duplicate keys there)."""
    from pymilvus import MilvusClient

    from cluster.contract import chunk_pk

    client = MilvusClient(str(db))
    try:
        client.load_collection(collection)
        out: list[str] = []
        it = client.query_iterator(collection, batch_size=1000, filter="",
                                   output_fields=["pk", "doc_id", "chunk_index"])
        while batch := it.next():
            for r in batch:
                assert r["pk"] == chunk_pk(r["doc_id"], r["chunk_index"]), r
                out.append(f"{r['doc_id']}#{r['chunk_index']}")
        it.close()
        return out
    finally:
        client.close()
        release_lite(db)


def release_lite(db: Path) -> None:
    """pymilvus keeps an embedded milvus-lite (and its folder lock) until the process exits; let it go."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(db))
