"""benchmarks/gpu.py runs end to end on CPU with tiny configs, importing only what the GPU machine has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

# The GPU machine has torch, transformers, sentence-transformers, numpy, pyarrow: none of these.
ABSENT_THERE = ("ray", "pymilvus", "s3fs", "boto3", "botocore", "moto", "milvus_lite", "flash_attn")
RUN = ("import sys, json, runpy\nsys.argv = ['benchmarks/gpu.py', '--tiny', '--out', %r]\n"
       "try:\n    runpy.run_path('benchmarks/gpu.py', run_name='__main__')\nexcept SystemExit as e:\n"
       "    assert not e.code, e.code\n"
       "print('IMPORTED', json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r)))")


def test_tiny_run_covers_every_path(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-c", RUN % (str(out), ABSENT_THERE)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=240, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "IMPORTED []", "nothing the GPU machine lacks was imported"
    results = json.loads(out.read_text())["results"]
    runs = {(r["model"], r["run"]) for r in results}
    assert runs == {
        ("tiny-m3", "st.encode fp32 bs32"), ("tiny-m3", "encoder padded +sparse"), ("tiny-m3", "encoder padded"),
        ("tiny-m3", "bare padded forward"), ("tiny-m3", "encoder unpadded +sparse"), ("tiny-m3", "encoder unpadded"),
        ("tiny-m3", "bare unpadded forward"),
        ("tiny-e5", "st.encode fp32 bs32"), ("tiny-e5", "encoder padded"), ("tiny-e5", "bare padded forward"),
        ("tiny-e5", "encoder unpadded"), ("tiny-e5", "bare unpadded forward")}
    for r in results:
        assert r["tokens_per_s"] > 0
        if r["run"].startswith("encoder"):  # same vectors as sentence-transformers on the same texts
            assert float(r["note"].rsplit("max |encoder - st| ", 1)[1]) <= 1e-5, r
    assert "Traceback" not in proc.stderr
