"""Secrets used by a run never appear in its logs, summary, manifest, dead letters or Ray's logs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.conftest import base_config, config_file, job_env, run_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

S3_SECRET = "S3-secret-Zq81x"
MILVUS_TOKEN = "root:MilvusTok-77Qp"


def test_no_secret_in_any_output(tmp_path: Path, s3_server: dict[str, Any], s3_bucket: str,
                                 tiny_m3_dir: Path) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key="any", secret="any", client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
                           skip_instance_cache=True)
    with fs.open(f"{s3_bucket}/docs/part-0.parquet", "wb") as f:
        pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["fine text", "", "more text"]}), f)
    (tmp_path / "token").write_text(MILVUS_TOKEN + "\n")
    sections = base_config(tmp_path, f"s3://{s3_bucket}/docs/", tiny_m3_dir, chunking={"overlap": 4},
                           batch={"max_tokens": 1024}, errors={"max_error_ratio": 1.0})
    sections["source"]["storage_options"] = {"endpoint_url": s3_server["endpoint_url"], "key": "AKIAEXAMPLEKEY",
                                             "secret": S3_SECRET}
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        env = job_env(MILVUS_TOKEN_FILE=str(tmp_path / "token"), AWS_SECRET_ACCESS_KEY=S3_SECRET,
                      RAY_TMPDIR=str(ray_tmp))
        code, summary, log = run_job(config_file(tmp_path, sections), tmp_path, "secrets", env=env)
        assert code == 3, log[-3000:]  # one empty text: finished with rejected input
        assert summary["rows_written"] == 2
        assert "'***'" in log or '"***"' in log  # the logged config shows the secrets masked
        outputs = [p for p in [*tmp_path.rglob("*"), *ray_tmp.rglob("*")]
                   if p.is_file() and p.name != "job.yaml" and p.name != "token" and p.stat().st_size < 50_000_000]
        assert len(outputs) > 10 and any(ray_tmp.rglob("*.log")), "Ray's logs are checked too"
        for path in outputs:
            data = path.read_bytes()
            for secret in (S3_SECRET, MILVUS_TOKEN, "MilvusTok-77Qp"):
                assert secret.encode() not in data, f"{secret} found in {path}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
