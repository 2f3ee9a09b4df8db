"""``ray job submit`` against a real local Ray head with token authentication, as on a cluster.

The head is started with ``ray start --head`` (dashboard on, ``RAY_AUTH_MODE=token`` and a random
``RAY_AUTH_TOKEN``); the repository is uploaded as the job's working dir (the job imports the
project from there: nothing here installs it), and the model, the shards and the milvus-lite file
are reached by absolute path on this machine.

Teardown stops exactly this head: every process of the session ``ray start`` was started in,
by pid. ``ray stop`` is not used on purpose: it kills every Ray process of the machine, which
would take down the suite's own session Ray (``ray_local``) and any other Ray running here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.jobs.conftest import write_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="teardown finds the head's processes in /proc"),
]

RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
EXCLUDES = [".cache", ".venv", ".git", ".hypothesis", ".ruff_cache", ".pytest_cache", "__pycache__",
            "embed-state", "out", "*.db"]


@dataclass(frozen=True)
class RayHead:
    address: str  # the dashboard / job submission address
    token: str
    env: dict[str, str]  # what a client needs: RAY_AUTH_MODE=token and the token


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(int(entry))
    return pids


def stop_session(sid: int, grace_s: float = 5.0) -> None:
    """SIGTERM every process of the session, SIGKILL what is left after ``grace_s`` (as ``ray stop``;
    gcs_server and the autoscaler monitor do not exit on SIGTERM alone)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_pids(sid):
            return


@pytest.fixture()
def ray_head() -> Iterator[RayHead]:
    if RAY is None:
        pytest.skip("the ray CLI is not installed")
    # A short folder of our own: Ray's unix sockets live under it (path length limit ~107).
    temp = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    # The job's entrypoint runs `python`: the interpreter of this environment, as on a cluster image
    # where the project's Python is first on PATH (CI runs the suite without activating the venv).
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    dashboard = free_port()
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}"]
    # Its own session: every process of this head (and the job's) carries its id, so teardown
    # can stop this head and nothing else.
    start = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = start.communicate(timeout=300)  # only against a hang
        assert start.returncode == 0, out[-4000:]
        yield RayHead(address=f"http://127.0.0.1:{dashboard}", token=token, env=env)
    finally:
        if start.poll() is None:
            start.kill()
        stop_session(start.pid)
        leftover = session_pids(start.pid)
        shutil.rmtree(temp, ignore_errors=True)
        assert not leftover, f"Ray processes still running after teardown: {leftover}"


def get(head: RayHead, path: str, *, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(head.address + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def expected_chunks(model_dir: Path, rows: list[dict[str, str]]) -> int:
    """Windows per document from the tokenizer and the window arithmetic (no prompt for this model)."""
    from transformers import AutoTokenizer

    from embedder.chunking import windows

    tok = AutoTokenizer.from_pretrained(model_dir)
    st_config = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
    max_len = st_config.get("max_seq_length") or tok.model_max_length  # 64 for the tiny model
    specials = len(tok("x")["input_ids"]) - len(tok("x", add_special_tokens=False)["input_ids"])
    budget = max_len - specials
    total = 0
    for r in rows:
        n = len(tok(r["text"], add_special_tokens=False)["input_ids"])
        total += 1 if n <= budget else len(windows(n, budget, min(32, budget - 1)))
    return total


def test_ray_job_submit_embeds_into_milvus(ray_head: RayHead, tmp_path: Path, tiny_m3_dir: Path,
                                           small_corpus: list[dict[str, str]]) -> None:
    rows = small_corpus[:10] + small_corpus[-1:]  # ten articles and the long handbook (many windows)
    docs = tmp_path / "docs"
    docs.mkdir()
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(rows[k::2]), docs / f"part-{k:05d}.parquet")
    db = tmp_path / "milvus.db"
    cfg = write_config(
        tmp_path / "job.yaml",
        source={"uri": str(docs), "metadata_columns": ["lang"]},
        model={"name": str(tiny_m3_dir), "precision": "fp32"},
        batch={"max_tokens": 2048},
        cluster={"workers": 1, "cpus_per_worker": 1},
        milvus={"uri": str(db), "collection": "docs"},
        checkpoint={"uri": str(tmp_path / "state" / "checkpoints")},
        errors={"uri": str(tmp_path / "state" / "errors")},
        log_every_s=1,
    )
    summary_path = tmp_path / "out" / "summary.json"
    job_id = f"embed-{secrets.token_hex(4)}"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}

    # Token authentication is really on: the job API refuses a request without the token.
    assert get(ray_head, "/api/jobs/", token=None)[0] == 401
    assert get(ray_head, "/api/jobs/", token="not-the-token")[0] == 403

    submit = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.address, "--submission-id", job_id,
         "--working-dir", str(REPO_ROOT), "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "-m", "jobs.embed", "--config", str(cfg), "--summary", str(summary_path)],
        env=ray_head.env, capture_output=True, text=True, timeout=600, check=False)  # only against a hang
    status, info = get(ray_head, f"/api/jobs/{job_id}", token=ray_head.token)
    _, logs = get(ray_head, f"/api/jobs/{job_id}/logs", token=ray_head.token)
    logs = (logs or {}).get("logs", "")
    assert submit.returncode == 0 and status == 200 and info["status"] == "SUCCEEDED", (
        f"submit rc={submit.returncode}\n{submit.stdout[-3000:]}\n{submit.stderr[-3000:]}\njob logs:\n{logs[-5000:]}")
    assert info["runtime_env"]["working_dir"].startswith("gcs://"), info["runtime_env"]  # the repo was uploaded

    # The job's log: progress lines and the summary, as the driver logged them.
    assert re.search(r"progress: \d+ docs read, .* \d+ rows written, 0 docs rejected, 2/2 shards", logs), logs[-3000:]
    logged = json.loads(re.search(r"summary (\{.*\})", logs).group(1))
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert logged == summary
    chunks = expected_chunks(tiny_m3_dir, rows)
    assert chunks > len(rows)  # the handbook was split into windows
    assert summary["docs_read"] == len(rows) and summary["docs_failed"] == 0 and summary["shards_done"] == 2
    assert summary["chunks_embedded"] == summary["rows_written"] == chunks

    from pymilvus import MilvusClient

    client = MilvusClient(str(db))  # the job (and its milvus-lite server) has exited
    try:
        client.load_collection("docs")  # a freshly opened milvus-lite file starts released
        assert client.query("docs", filter="", output_fields=["count(*)"])[0]["count(*)"] == chunks
        handbook = client.query("docs", filter=f'doc_id == "{rows[-1]["id"]}"', output_fields=["chunk_index"])
        assert sorted(r["chunk_index"] for r in handbook) == list(range(len(handbook)))
    finally:
        client.close()
