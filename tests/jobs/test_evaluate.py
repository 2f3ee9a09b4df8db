"""``python -m jobs.evaluate`` end to end (offline e5 and the tiny sparse model), and the pairs sources."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedder import evaluation as ev
from jobs import evaluate as E
from tests.jobs.conftest import write_config

E5_LANGS = ["en", "de", "ru", "ja"]
E5_DIM = 16  # far too small for e5: the audit must warn


def _titles_jsonl(path: Path, langs: list[str]) -> Path:
    """The 30 sample topics' one-line titles: short texts, quick to embed."""
    from sample.corpus import load_topics

    rows = [{"item_id": t.id, "lang": lang, "text": t.title(lang)} for t in load_topics() for lang in langs]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = E.main(argv)
    return code, capsys.readouterr().out


# ---------------------------------------------------------------- e5, dense, through Milvus


@pytest.fixture(scope="module")
def e5_run(e5_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("evaluate-e5")
    pairs = _titles_jsonl(tmp / "pairs.jsonl", E5_LANGS)
    config = write_config(tmp / "job.yaml", model={"name": str(e5_model_dir), "dense_dim": E5_DIM},
                          batch={"max_tokens": 8192})
    out = tmp / "report.json"
    with pytest.MonkeyPatch.context() as mp:
        import io
        import sys

        buf = io.StringIO()
        mp.setattr(sys, "stdout", buf)
        code = E.main(["--config", str(config), "--pairs", str(pairs), "--dims", "full,256,128",
                       "--through-milvus", "--json", str(out)])
    return {"code": code, "stdout": buf.getvalue(), "report": json.loads(out.read_text(encoding="utf-8"))}


@pytest.mark.slow
def test_e5_report_schema(e5_run: dict[str, Any]) -> None:
    assert e5_run["code"] == 0
    r = e5_run["report"]
    assert r["items"] == 30 and r["languages"] == E5_LANGS and r["texts"] == 120
    assert r["full_dim"] == 384 and r["dim"] == E5_DIM and r["modes"] == ["dense"]
    assert r["failed"] == {}
    assert len(r["pairs"]) == 16
    assert [(p["query_lang"], p["doc_lang"]) for p in r["pairs"][:5]] == [
        ("en", "en"), ("en", "de"), ("en", "ru"), ("en", "ja"), ("de", "en")]
    for row in r["pairs"]:
        assert set(row) == {"query_lang", "doc_lang", "docs", "dense"}
        assert set(row["dense"]) == {*ev.METRICS, "queries"} and row["dense"]["queries"] == 30
        assert 0.0 <= row["dense"]["recall@1"] <= row["dense"]["recall@10"] <= 1.0
        assert row["dense"]["recall@1"] <= row["dense"]["mrr@10"] <= row["dense"]["recall@10"]
    assert r["averages"]["all"]["pairs"] == 16 and r["averages"]["cross_lingual"]["pairs"] == 12
    assert r["averages"]["all"]["dense"]["queries"] == 16 * 30
    for key in ("encode_s", "elapsed_s", "model", "pairs_source", "matryoshka", "warnings", "max_recall_drop"):
        assert key in r


@pytest.mark.slow
def test_e5_full_dimension_retrieves_across_languages(e5_run: dict[str, Any]) -> None:
    full = next(row for row in e5_run["report"]["matryoshka"] if row["dim"] == 384)
    assert full["cross_lingual"]["dense"]["recall@10"] >= 0.95
    assert full["cross_lingual"]["dense"]["recall@1"] >= 0.75
    assert full["all"]["dense"]["mrr@10"] > full["cross_lingual"]["dense"]["mrr@10"] - 1e-9  # same language is easy


@pytest.mark.slow
def test_e5_matryoshka_audit_rows(e5_run: dict[str, Any]) -> None:
    audit = e5_run["report"]["matryoshka"]
    assert [row["dim"] for row in audit] == [384, 256, 128, E5_DIM]  # the configured dim joins the candidates
    assert [row["bytes_per_million"] for row in audit] == [384 * 4_000_000, 256 * 4_000_000, 128 * 4_000_000,
                                                           E5_DIM * 4_000_000]
    assert [row["configured"] for row in audit] == [False, False, False, True]
    assert audit[0]["recall@10_drop"] == 0.0
    for row in audit:
        head = row["cross_lingual"]["dense"]["recall@10"]
        assert row["recall@10_drop"] == pytest.approx(audit[0]["cross_lingual"]["dense"]["recall@10"] - head)
    # The table of the configured dim is the audit's row for it.
    assert audit[-1]["cross_lingual"] == e5_run["report"]["averages"]["cross_lingual"]


@pytest.mark.slow
def test_e5_warns_when_the_configured_dim_loses_recall(e5_run: dict[str, Any]) -> None:
    r = e5_run["report"]
    assert r["matryoshka"][-1]["recall@10_drop"] > E.MAX_RECALL_DROP
    matryoshka, loss = r["warnings"]  # multilingual-e5 was not trained for truncation, and the cut loses recall
    assert "does not say it was trained for Matryoshka truncation" in matryoshka and f"={E5_DIM}" in matryoshka
    assert f"model.dense_dim={E5_DIM}" in loss
    assert "WARNING: model.dense_dim=16 loses" in e5_run["stdout"]


@pytest.mark.slow
def test_e5_storage_audit_per_dimension_and_type(e5_run: dict[str, Any]) -> None:
    r = e5_run["report"]
    rows = {(x["dim"], x["type"]): x for x in r["storage"]}
    assert rows[(384, "float32")]["recall@10_drop"] == 0.0  # the reference
    assert {t for d, t in rows if d == 384} == {"float32", "float16", "bfloat16", "int8", "binary", "binary+rescore"}
    for dim in {d for d, _ in rows}:
        f32 = rows[(dim, "float32")]
        assert abs(rows[(dim, "float16")]["recall@10"] - f32["recall@10"]) <= 0.02  # rounding only
        assert abs(rows[(dim, "int8")]["recall@10"] - f32["recall@10"]) <= 0.05
        assert rows[(dim, "binary+rescore")]["recall@10"] >= rows[(dim, "binary")]["recall@10"] - 1e-9
        assert rows[(dim, "float32")]["bytes_per_million"]["vectors"] == 4 * dim * 1_000_000
        assert rows[(dim, "int8")]["bytes_per_million"]["vectors"] == dim * 1_000_000
        assert rows[(dim, "binary")]["bytes_per_million"]["vectors"] == dim // 8 * 1_000_000
        assert rows[(dim, "binary")]["bytes_per_million"]["hnsw"] == (dim // 8 + 128) * 1_000_000
    assert [x["configured"] for x in r["storage"]].count(True) == 1
    assert rows[(E5_DIM, "float32")]["configured"]
    assert "Storage audit" in e5_run["stdout"] and "binary+rescore" in e5_run["stdout"]


@pytest.mark.slow
def test_e5_console_tables(e5_run: dict[str, Any]) -> None:
    out = e5_run["stdout"]
    assert "30 items x 4 languages (en, de, ru, ja); dense dim 16 of 384" in out
    for needle in ("en -> ja", "ja -> de", "all pairs (16)", "cross-lingual pairs (12)",
                   "dense recall@10, query language", "Matryoshka audit", "1.54 GB", "64.00 MB",
                   "<- model.dense_dim", "Through Milvus"):
        assert needle in out, needle


@pytest.mark.slow
@pytest.mark.integration
def test_through_milvus_equals_in_memory(e5_run: dict[str, Any]) -> None:
    r = e5_run["report"]
    milvus = r["milvus"]
    assert milvus["dim"] == E5_DIM and milvus["layout"] == "per_language" and milvus["rows_loaded"] == 120
    assert milvus["searches"] == 4 * 120
    assert len(milvus["pairs"]) == len(r["pairs"])
    for in_memory, through in zip(r["pairs"], milvus["pairs"]):
        assert (in_memory["query_lang"], in_memory["doc_lang"]) == (through["query_lang"], through["doc_lang"])
        for m in ev.METRICS:
            assert through["dense"][m] == pytest.approx(in_memory["dense"][m]), (in_memory, through)


# ---------------------------------------------------------------- tiny model with a sparse head


PAIRS_TINY = {
    "fox": {"en": "The quick brown fox jumps over the lazy dog.",
            "de": "Der schnelle braune Fuchs springt über den faulen Hund.",
            "ru": "Быстрая коричневая лиса прыгает через ленивую собаку."},
    "router": {"en": "Reset the router by holding the button for ten seconds.",
               "de": "Setzen Sie den Router zurück, indem Sie den Knopf zehn Sekunden halten.",
               "ru": "Сбросьте роутер, удерживая кнопку десять секунд."},
    "coffee": {"en": "Descale the coffee machine every month with citric acid.",
               "de": "Entkalken Sie die Kaffeemaschine jeden Monat mit Zitronensäure.",
               "ru": "Очищайте кофемашину от накипи каждый месяц лимонной кислотой."},
    "dog": {"en": "The lazy dog sleeps in the sun.", "de": "Der faule Hund schläft in der Sonne.",
            "ru": "Ленивая собака спит на солнце."},
}


@pytest.fixture(scope="module")
def tiny_config(tiny_m3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("evaluate-tiny")
    return write_config(tmp / "job.yaml", source={"uri": str(tmp / "unused")},
                        model={"name": str(tiny_m3_dir), "precision": "fp32"}, batch={"max_tokens": 1024})


def test_tiny_m3_sparse_and_hybrid(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"item_id": item, "lang": lang, "text": text} for item, texts in PAIRS_TINY.items()
            for lang, text in texts.items()]
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    out = tmp_path / "report.json"
    code, stdout = _run(["--config", str(tiny_config), "--pairs", str(pairs), "--dims", "full,16,8",
                         "--json", str(out)], capsys)
    assert code == 0
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["modes"] == ["dense", "sparse", "hybrid"]
    assert r["full_dim"] == 32 and r["dim"] == 32 and r["warnings"] == []  # no dense_dim: nothing to warn about
    assert len(r["pairs"]) == 9
    for row in r["pairs"]:
        for mode in ("dense", "sparse", "hybrid"):
            assert row[mode]["queries"] == 4
            assert 0.0 <= row[mode]["recall@1"] <= row[mode]["recall@10"] <= 1.0
    assert set(r["averages"]["cross_lingual"]) == {"pairs", "dense", "sparse", "hybrid"}
    assert [row["dim"] for row in r["matryoshka"]] == [32, 16, 8]
    assert [row["bytes_per_million"] for row in r["matryoshka"]] == [128_000_000, 64_000_000, 32_000_000]
    assert all("hybrid" in row["all"] for row in r["matryoshka"])
    assert "sparse" in stdout and "hybrid" in stdout and "en -> ru" in stdout


def test_tiny_m3_hybrid_is_rrf_of_dense_and_sparse(tiny_config: Path) -> None:
    """The report's hybrid figures come from fusing the two score matrices it reports."""
    from embedder.encoder import Encoder
    from jobs.config import load_config

    cfg = load_config(tiny_config)
    pairs = E.Pairs(item_ids=np.array(["a", "b", "a", "b"], dtype=object), langs=np.array(["en", "en", "de", "de"],
                    dtype=object), texts=[PAIRS_TINY["fox"]["en"], PAIRS_TINY["router"]["en"],
                                          PAIRS_TINY["fox"]["de"], PAIRS_TINY["router"]["de"]], languages=("en", "de"))
    vectors = E.embed_pairs(Encoder(cfg.model, cfg.batch, cfg.chunking), pairs)
    report = E.evaluate(pairs, vectors, configured_dim=None, dims=["full"])
    dense = ev.dense_scores(vectors.queries, vectors.docs)
    sparse = ev.absent_when_zero(ev.sparse_scores(vectors.sparse_queries, vectors.sparse_docs))
    q, d = [0, 1], [2, 3]  # en -> de
    fused = ev.rrf_scores([dense[np.ix_(q, d)], sparse[np.ix_(q, d)]], depth=E.HYBRID_DEPTH)
    want = ev.retrieval_metrics(np.where(fused > 0, fused, -np.inf), ["a", "b"], ["a", "b"])
    got = next(p for p in report["pairs"] if (p["query_lang"], p["doc_lang"]) == ("en", "de"))
    assert got["hybrid"] == want
    assert got["dense"] == ev.retrieval_metrics(dense[np.ix_(q, d)], ["a", "b"], ["a", "b"])


def test_bundled_sample_pairs(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code, _ = _run(["--config", str(tiny_config), "--pairs", "sample", "--langs", "en,ko", "--max-items", "3",
                    "--dims", "full", "--json", str(out)], capsys)
    assert code == 0
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["items"] == 3 and r["languages"] == ["en", "ko"] and r["texts"] == 6


# ---------------------------------------------------------------- input errors


def test_bad_pairs_and_arguments(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "a", "text": "no language"}\n', encoding="utf-8")
    assert E.main(["--config", str(tiny_config), "--pairs", str(bad)]) == 2
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"item_id": "a", "lang": "en", "text": "x"}\n{"item_id": "a", "lang": "en", "text": "y"}\n',
                   encoding="utf-8")
    assert E.main(["--config", str(tiny_config), "--pairs", str(dup)]) == 2
    assert E.main(["--config", str(tiny_config), "--pairs", "sample", "--langs", "en,xx"]) == 2
    assert E.main(["--config", str(tiny_config), "--pairs", str(tmp_path / "missing.jsonl")]) == 2
    assert E.main(["--config", str(tmp_path / "nope.yaml"), "--pairs", "sample"]) == 2
    with pytest.raises(SystemExit):
        E.main(["--config", str(tiny_config), "--pairs", "sample", "--dims", "256,abc"])
    capsys.readouterr()


def test_read_pairs_orders_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [("b", "de", "B de"), ("a", "en", "A en"), ("a", "de", "A de"), ("b", "en", "B en"), ("c", "fr", "C fr")]
    path.write_text("".join(json.dumps({"item_id": i, "lang": lang, "text": t}) + "\n" for i, lang, t in rows),
                    encoding="utf-8")
    pairs = E.read_pairs(str(path), ["en", "de"])
    assert pairs.languages == ("en", "de")
    assert pairs.texts == ["A en", "B en", "A de", "B de"]
    assert E.read_pairs(str(path)).languages == ("de", "en", "fr")
    assert E.read_pairs(str(path), max_items=1).texts == ["A de", "A en"]  # file order of languages
    assert E.parse_dims("full, 256,64") == ["full", 256, 64]


# ---------------------------------------------------------------- the Django evaluation set


def _write_mo(path: Path, messages: dict[str, str]) -> None:
    """A GNU .mo catalog (what msgfmt writes), UTF-8, without a hash table."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items(),
                     key=lambda kv: kv[0].encode())
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    start = 7 * 4 + 16 * n
    table_ids, table_strs, data = [], [], b""
    for blob, table in [(b, table_ids) for b in ids] + [(b, table_strs) for b in strs]:
        table.append((len(blob), start + len(data)))
        data += blob + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    body = b"".join(struct.pack("<2I", *t) for t in table_ids) + b"".join(struct.pack("<2I", *t) for t in table_strs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body + data)


def _fake_django(root: Path) -> Path:
    de = {"Enter a valid email address please.": "Bitte eine gültige E-Mail-Adresse eingeben.",
          "The “%(name)s” field is required here.": "Das Feld „%(name)s“ ist hier erforderlich.",
          "Only three words": "Nur drei Wörter",
          "Untranslated sentence stays English here.": "Untranslated sentence stays English here.",
          "Missing in Japanese but long enough.": "Fehlt auf Japanisch, ist aber lang genug.",
          "%(a)s %(b)s %(c)s and two.": "%(a)s %(b)s %(c)s und zwei.",
          "Your password was changed successfully.": "Ihr Passwort wurde erfolgreich geändert."}
    ja = {"Enter a valid email address please.": "有効なメールアドレスを入力してください。",
          "The “%(name)s” field is required here.": "“%(name)s” フィールドはここで必須です。",
          "Only three words": "三語だけ",
          "Untranslated sentence stays English here.": "未翻訳の文",
          "%(a)s %(b)s %(c)s and two.": "%(a)s %(b)s %(c)s と二つ。",
          "Your password was changed successfully.": "パスワードは正常に変更されました。"}
    _write_mo(root / "conf/locale/de/LC_MESSAGES/django.mo", de)
    _write_mo(root / "conf/locale/ja/LC_MESSAGES/django.mo", ja)
    _write_mo(root / "contrib/admin/locale/ja/LC_MESSAGES/djangojs.mo", {"Missing in German, long enough.": "x"})
    return root


def test_evalset_from_catalogs(tmp_path: Path) -> None:
    from sample.evalset import build_evalset

    root = _fake_django(tmp_path / "django")
    out = tmp_path / "set.jsonl"
    info = build_evalset(out, ["en", "de", "ja"], root=root, min_items=1)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert info.items == 3 and info.rows == 9 and len(rows) == 9
    texts = {(r["item_id"], r["lang"]): r["text"] for r in rows}
    english = sorted(t for (_, lang), t in texts.items() if lang == "en")
    # Placeholders and the quotes around them are gone; short, untranslated, partly translated and
    # placeholder-heavy messages are skipped.
    assert english == ["Enter a valid email address please.", "The field is required here.",
                       "Your password was changed successfully."]
    assert "Das Feld ist hier erforderlich." in texts.values()
    assert "フィールドはここで必須です。" in texts.values()
    assert all(set(r) == {"item_id", "lang", "text", "source"} for r in rows)
    assert [r["lang"] for r in rows[:3]] == ["en", "de", "ja"]
    # Deterministic, and max_items keeps a subset.
    again = tmp_path / "again.jsonl"
    build_evalset(again, ["en", "de", "ja"], root=root, min_items=1)
    assert again.read_bytes() == out.read_bytes()
    assert build_evalset(tmp_path / "two.jsonl", ["en", "de", "ja"], 2, root=root, min_items=1).items == 2


def test_evalset_errors(tmp_path: Path) -> None:
    from sample.evalset import EvalsetError, build_evalset, clean, locale_dir

    root = _fake_django(tmp_path / "django")
    with pytest.raises(EvalsetError, match="no catalogs"):
        build_evalset(tmp_path / "x.jsonl", ["en", "de", "ko"], root=root)
    with pytest.raises(EvalsetError, match="only 3"):
        build_evalset(tmp_path / "x.jsonl", ["en", "de", "ja"], root=root, min_items=10)
    with pytest.raises(ValueError, match="'en'"):
        build_evalset(tmp_path / "x.jsonl", ["de", "ja"], root=root)
    assert locale_dir("zh") == "zh_Hans" and locale_dir("pt-br") == "pt_BR" and locale_dir("de") == "de"
    assert clean("Ensure this value is %(limit)s (it is %(show)s).") == "Ensure this value is (it is )."
    assert clean("« %(value)s » n’est pas valide.") == "n’est pas valide."


def test_evalset_from_the_installed_django(tmp_path: Path) -> None:
    pytest.importorskip("django")
    from sample.evalset import DEFAULT_LANGS, main

    out = tmp_path / "django.jsonl"
    assert main([str(out), "--max-items", "120"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    items = {r["item_id"] for r in rows}
    assert len(items) == 120 and len(rows) == 120 * len(DEFAULT_LANGS)
    by_lang = {lang: [r["text"] for r in rows if r["lang"] == lang] for lang in DEFAULT_LANGS}
    assert all(len(v) == 120 and len(set(v)) == 120 for v in by_lang.values())  # aligned, no duplicates
    assert all(len(t.split()) >= 4 for t in by_lang["en"])
    placeholder = re.compile(r"%\(\w+\)\w|%[sd]|\{\w*\}")
    assert not any(placeholder.search(r["text"]) for r in rows)
    scripts = {"ru": (0x0400, 0x04FF), "zh": (0x4E00, 0x9FFF), "ja": (0x3040, 0x9FFF), "ar": (0x0600, 0x06FF),
               "ko": (0xAC00, 0xD7AF), "he": (0x0590, 0x05FF)}
    for lang, (low, high) in scripts.items():
        in_script = sum(any(low <= ord(ch) <= high for ch in t) for t in by_lang[lang])
        assert in_script >= 110, (lang, in_script)
