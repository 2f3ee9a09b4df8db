"""Transient object-storage errors (HTTP 503 SlowDown on every third request) are retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.conftest import base_config, config_file, milvus_pks, run_in_ray
from tests.servers import FlakyS3Proxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    proxy = FlakyS3Proxy(str(s3_server["endpoint_url"]), every=3)
    try:
        sections = base_config(tmp_path, f"s3://{s3_bucket}/docs/", tiny_m3_dir, batch={"max_tokens": 1024},
                               chunking={"overlap": 4})
        sections["source"]["storage_options"] = {"endpoint_url": proxy.url, "key": "k", "secret": "s"}
        code, summary, log = run_in_ray(config_file(tmp_path, sections), tmp_path, "flaky")
    finally:
        proxy.close()
    assert proxy.failed >= 3, "the proxy injected no faults"
    assert code == 0, log[-3000:]
    assert summary["docs_read"] == len(rows) and summary["shards_failed"] == 0
    assert {p.split("#")[0] for p in milvus_pks(tmp_path / "milvus.db")} == {r["id"] for r in rows}
