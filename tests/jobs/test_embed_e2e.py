"""End to end: S3 (moto server) shards -> Ray Data pipeline -> milvus-lite, through the real CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.contract import chunk_pk
from tests.conftest import REPO_ROOT
from tests.jobs.conftest import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def s3fs_of(opts: dict[str, Any]):  # noqa: ANN201
    import s3fs

    return s3fs.S3FileSystem(key=opts["key"], secret=opts["secret"],
                             client_kwargs={"endpoint_url": opts["endpoint_url"]}, skip_instance_cache=True)


def upload_shards(opts: dict[str, Any], bucket: str, rows: list[dict[str, str]], fmt: str, n: int = 3) -> str:
    fs = s3fs_of(opts)
    for k in range(n):
        part = rows[k::n]
        key = f"{bucket}/docs/part-{k:05d}.{fmt}"
        if fmt == "parquet":
            with fs.open(key, "wb") as f:
                pq.write_table(pa.Table.from_pylist(part), f)
        else:
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part).encode()
            with fs.open(key, "wb") as f:
                f.write(gzip.compress(data) if fmt == "jsonl.gz" else data)
    return f"s3://{bucket}/docs/"


def expected_chunks(model_dir: Path, rows: list[dict[str, str]]) -> int:
    """Chunk count computed independently of the pipeline (tokenizer + window arithmetic)."""
    from transformers import AutoTokenizer

    from embedder.chunking import windows

    tok = AutoTokenizer.from_pretrained(model_dir)
    total = 0
    for r in rows:
        n_body = len(tok("passage: " + r["text"], add_special_tokens=False)["input_ids"]) - len(
            tok("passage:", add_special_tokens=False)["input_ids"])
        total += len(windows(n_body, 512 - 2 - len(tok("passage:", add_special_tokens=False)["input_ids"]), 32)) \
            if n_body + 2 + 3 > 512 else 1
    return total


def job_config(tmp_path: Path, uri: str, opts: dict[str, Any], model: Path, **model_extra: Any) -> Path:
    return write_config(
        tmp_path / "job.yaml",
        source={"uri": uri, "storage_options": opts, "metadata_columns": ["lang", "topic"], "lang_column": "lang"},
        model={"name": str(model), "dense_dim": 256, "precision": "fp32", **model_extra},
        cluster={"workers": 1, "cpus_per_worker": 1},
        milvus={"uri": str(tmp_path / "milvus.db"), "collection": "docs"},
        checkpoint={"uri": str(tmp_path / "state" / "checkpoints")},
        errors={"uri": str(tmp_path / "state" / "errors")},
        log_every_s=1,
    )


def tiny_job_config(tmp_path: Path, uri: str, opts: dict[str, Any], model: Path) -> Path:
    """A job on the tiny random model: for what the pipeline does, not what the vectors mean."""
    return write_config(
        tmp_path / "job.yaml",
        source={"uri": uri, "storage_options": opts},
        model={"name": str(model), "precision": "fp32"}, batch={"max_tokens": 1024}, chunking={"overlap": 4},
        milvus={"uri": str(tmp_path / "milvus.db"), "collection": "docs"},
        checkpoint={"uri": str(tmp_path / "state" / "checkpoints")},
        errors={"uri": str(tmp_path / "state" / "errors")},
    )


def run_embed(cfg: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    from jobs.embed import main

    summary = cfg.parent / "summary.json"
    summary.unlink(missing_ok=True)
    code = main(["--config", str(cfg), "--summary", str(summary), *extra])
    return code, (json.loads(summary.read_text()) if summary.exists() else {})


def query(cfg: Path, text: str, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    from jobs.search import main

    capsys.readouterr()
    assert main(["--config", str(cfg), "--top-k", "10", *args, text]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_s3_to_milvus_end_to_end(tmp_path: Path, s3_server: dict[str, Any], s3_bucket: str,
                                 small_corpus: list[dict[str, str]], e5_model_dir: Path, ray_local: None,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    uri = upload_shards(s3_server, s3_bucket, small_corpus, "parquet")
    cfg = job_config(tmp_path, uri, s3_server, e5_model_dir)
    code, summary = run_embed(cfg)
    assert code == 0, summary
    chunks = expected_chunks(e5_model_dir, small_corpus)
    assert chunks > len(small_corpus)  # the handbook was split into windows
    assert summary["docs_read"] == len(small_corpus)
    assert summary["chunks_embedded"] == summary["rows_written"] == chunks
    assert summary["docs_failed"] == 0 and summary["shards_done"] == 3
    assert 0.5 < summary["padding_efficiency"] <= 1.0
    langs = summary["languages"]
    assert set(langs) == {r["lang"] for r in small_corpus}
    assert langs["ja"]["docs"] == sum(1 for r in small_corpus if r["lang"] == "ja")
    assert sum(v["chunks"] for v in langs.values()) == chunks
    assert langs["en"]["chunks_at_limit_share"] > 0 and langs["de"]["chunks_at_limit_share"] == 0  # the handbook
    assert langs["zh"]["tokens_per_char"] > langs["en"]["tokens_per_char"]  # Han: more tokens per character

    from pymilvus import MilvusClient

    client = MilvusClient(str(tmp_path / "milvus.db"))
    try:
        client.load_collection("docs")  # a freshly opened milvus-lite folder starts released
        assert client.query("docs", filter="", output_fields=["count(*)"])[0]["count(*)"] == chunks
        fields = {f["name"]: f for f in client.describe_collection("docs")["fields"]}
        assert fields["dense"]["params"]["dim"] == 256
        rows = client.query("docs", filter='doc_id == "router-reset.de.body"', output_fields=["pk", "dense", "lang"])
        assert [r["pk"] for r in rows] == [chunk_pk("router-reset.de.body", 0)] and rows[0]["lang"] == "de"
        assert abs(sum(v * v for v in rows[0]["dense"]) - 1.0) < 1e-4
        handbook = client.query("docs", filter='doc_id == "handbook.en.handbook"', output_fields=["chunk_index"])
        assert sorted(r["chunk_index"] for r in handbook) == list(range(len(handbook)))
    finally:
        client.close()

    # Cross-lingual: an English question finds the German, Japanese and Arabic versions of the answer.
    hits = query(cfg, "How do I reset my wifi router to factory settings?", capsys)
    top_topics = [h["metadata"]["topic"] for h in hits[:5]]
    assert top_topics.count("router-reset") >= 4, hits[:5]
    langs = {h["metadata"]["lang"] for h in hits if h["metadata"]["topic"] == "router-reset"}
    assert {"de", "ja", "ar"} & langs and len(langs) >= 4
    # And the other way round: a German query finds the English article.
    hits = query(cfg, "Wie entkalke ich meine Kaffeemaschine?", capsys)
    assert hits[0]["metadata"]["topic"] == "coffee-descaling"
    assert any(h["doc_id"] == "coffee-descaling.en.body" for h in hits[:10])


def test_gzipped_jsonl_from_s3_and_a_full_rerun_starts_over_without_duplicates(
        tmp_path: Path, s3_server: dict[str, Any], s3_bucket: str, small_corpus: list[dict[str, str]],
        tiny_m3_dir: Path, ray_local: None) -> None:
    rows = [r for r in small_corpus if r["kind"] != "handbook"][:24]
    uri = upload_shards(s3_server, s3_bucket, rows, "jsonl.gz", n=2)
    cfg = tiny_job_config(tmp_path, uri, s3_server, tiny_m3_dir)
    code, first = run_embed(cfg)
    assert code == 0 and first["docs_read"] == len(rows) and first["shards_done"] == 2
    assert first["rows_written"] == first["chunks_embedded"] >= len(rows)
    from pymilvus import MilvusClient

    from cluster.contract import chunk_pk

    # Rows deleted behind the job's back: the next full run finds them missing in the collection (a full
    # run asks the collection, never only the manifest) and embeds exactly that document again.
    client = MilvusClient(str(tmp_path / "milvus.db"))
    try:
        client.load_collection("docs")
        gone = client.query("docs", filter="", output_fields=["pk"], limit=1000)
        victim = rows[5]["id"]
        client.delete("docs", ids=[r["pk"] for r in gone if r["pk"].startswith(chunk_pk(victim, 0)[:-1])])
    finally:
        client.close()
    code, summary = run_embed(cfg)  # mode full: the previous run finished, so this one starts over
    assert code == 0 and summary["shards_done"] == 2 and summary["shards_skipped"] == 0
    assert summary["docs_unchanged"] == len(rows) - 1 and summary["docs_read"] == len(rows)
    assert 1 <= summary["rows_written"] == summary["chunks_embedded"] < first["rows_written"]
    client = MilvusClient(str(tmp_path / "milvus.db"))
    try:
        client.load_collection("docs")
        assert client.query("docs", filter="", output_fields=["count(*)"])[0]["count(*)"] == first["rows_written"]
        got = client.query("docs", filter="chunk_index == 0", output_fields=["doc_id"], limit=100)
        assert sorted(r["doc_id"] for r in got) == sorted(r["id"] for r in rows)
    finally:
        client.close()


def test_sparse_model_writes_sparse_vectors_and_a_schema_mismatch_stops_before_embedding(
        tmp_path: Path, tiny_m3_dir: Path, ray_local: None, small_corpus: list[dict[str, str]],
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    rows = small_corpus[:10]
    pq.write_table(pa.Table.from_pylist(rows), src / "part-0.parquet")
    cfg = write_config(tmp_path / "job.yaml", source={"uri": str(src)},
                       model={"name": str(tiny_m3_dir), "sparse": True, "precision": "fp32"},
                       batch={"max_tokens": 1024}, chunking={"overlap": 4},
                       milvus={"uri": str(tmp_path / "milvus.db"), "collection": "m3"},
                       checkpoint={"uri": str(tmp_path / "state")}, errors={"uri": None})
    code, summary = run_embed(cfg)
    assert code == 0 and summary["rows_written"] == summary["chunks_embedded"] > len(rows)
    from pymilvus import MilvusClient

    client = MilvusClient(str(tmp_path / "milvus.db"))
    try:
        fields = {f["name"] for f in client.describe_collection("m3")["fields"]}
        assert {"dense", "sparse"} <= fields
        client.load_collection("m3")
        got = client.query("m3", filter="chunk_index >= 0", output_fields=["sparse"], limit=100)
        assert got and all(len(r["sparse"]) > 0 for r in got)
    finally:
        client.close()
    for mode in ("sparse", "hybrid"):
        hits = query(cfg, rows[0]["text"][:80], capsys, "--mode", mode)
        assert hits and hits[0]["doc_id"] == rows[0]["id"]

    # The collection's schema mismatches the config (dense 32 there, 16 asked): refused before any work.
    caplog.clear()
    code, summary = run_embed(cfg, "--set", "model.dense_dim=16")
    assert code == 2 and summary == {}
    assert "dense" in caplog.text and "32" in caplog.text and "16" in caplog.text


@pytest.mark.parametrize(("override", "message"), [
    ("model.precision=fp8", "model.precision: 'fp8' is not one of"),
    ("model.colour=blue", "unknown key(s) model.colour; valid keys of model:"),
    ("model.dense_dim=4096", "model.dense_dim 4096 is larger than"),
    ("source.uri=/nonexistent/docs", "/nonexistent/docs"),
])
def test_config_errors_are_clear(override: str, message: str, tmp_path: Path, e5_model_dir: Path,
                                 small_corpus: list[dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "docs").mkdir()
    pq.write_table(pa.Table.from_pylist(small_corpus[:2]), tmp_path / "docs" / "part-0.parquet")
    cfg = job_config(tmp_path, str(tmp_path / "docs"), {}, e5_model_dir)
    code, _ = run_embed(cfg, "--set", override)
    assert code == 2
    assert message in caplog.text


def test_importing_the_job_does_not_import_torch() -> None:
    code = ("import sys, jobs.embed, jobs.search, jobs.config, cluster.plan, cluster.run, cluster.pipeline; "
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'pymilvus') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
