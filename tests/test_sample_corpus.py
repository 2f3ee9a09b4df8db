"""The bundled sample corpus: complete translations, right scripts, deterministic sharded output."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sample.corpus import (
    COLUMNS,
    FORMATS,
    HANDBOOK_TOPIC,
    KINDS,
    LANGUAGES,
    TOPICS_PATH,
    Document,
    aligned_pairs,
    documents,
    load_topics,
    main,
    split_shards,
    write_corpus,
)

ROOT = Path(__file__).resolve().parents[1]

#: Unicode scripts (by character-name prefix) expected for the letters of each language.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "en": ("LATIN",), "de": ("LATIN",), "fr": ("LATIN",), "es": ("LATIN",),
    "ru": ("CYRILLIC",),
    "zh": ("CJK UNIFIED",),
    "ja": ("CJK UNIFIED", "HIRAGANA", "KATAKANA"),
    "ar": ("ARABIC",),
    "hi": ("DEVANAGARI",),
    "ko": ("HANGUL",),
}
#: Scripts of which at least one must appear in every text of the language (Kana for Japanese).
REQUIRED: dict[str, tuple[str, ...]] = {
    "ru": ("CYRILLIC",), "zh": ("CJK UNIFIED",), "ja": ("HIRAGANA", "KATAKANA"),
    "ar": ("ARABIC",), "hi": ("DEVANAGARI",), "ko": ("HANGUL",),
}
#: Characters of a translated body per character of the English body (catches a dropped sentence).
LENGTH_RATIO: dict[str, tuple[float, float]] = {
    "de": (0.9, 1.6), "fr": (0.9, 1.6), "es": (0.9, 1.6), "ru": (0.8, 1.5), "ar": (0.6, 1.3),
    "hi": (0.7, 1.4), "zh": (0.2, 0.45), "ja": (0.3, 0.65), "ko": (0.35, 0.7),
}


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    for prefix in ("LATIN", "CYRILLIC", "CJK UNIFIED", "HIRAGANA", "KATAKANA", "ARABIC", "DEVANAGARI", "HANGUL"):
        if name.startswith(prefix):
            return prefix
    return name.split(" ")[0] or "UNKNOWN"


def _letter_scripts(text: str) -> Counter[str]:
    return Counter(_script(ch) for ch in text if ch.isalpha())


def _read_rows(path: Path) -> list[dict[str, str]]:
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


@pytest.fixture(scope="module")
def topics():
    return load_topics()


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return documents()


# -- the hand-written text ---------------------------------------------------------------------

def test_topics_have_every_language(topics) -> None:
    assert len(topics) >= 30
    assert len({t.id for t in topics}) == len(topics)
    for topic in topics:
        assert set(topic.titles) == set(topic.bodies) == set(LANGUAGES), topic.id
        for lang in LANGUAGES:
            title, body = topic.title(lang), topic.body(lang)
            assert title.strip() and body.strip(), f"{topic.id}.{lang} is empty"
            assert "\n" not in title and "\n" not in body, f"{topic.id}.{lang}: one line / one paragraph"
            assert len(title) < len(body), f"{topic.id}.{lang}: title longer than body"


def test_english_bodies_are_one_paragraph_of_60_to_120_words(topics) -> None:
    for topic in topics:
        words = len(topic.body("en").split())
        assert 60 <= words <= 120, f"{topic.id}: {words} words"


def test_titles_and_bodies_differ_between_topics(topics) -> None:
    for lang in LANGUAGES:
        assert len({t.title(lang) for t in topics}) == len(topics), lang
        assert len({t.body(lang) for t in topics}) == len(topics), lang


@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_language_is_written_in_its_own_script(topics, lang: str) -> None:
    expected = set(SCRIPTS[lang])
    for topic in topics:
        for part, text in (("title", topic.title(lang)), ("body", topic.body(lang))):
            scripts = _letter_scripts(text)
            share = sum(n for s, n in scripts.items() if s in expected) / sum(scripts.values())
            # Latin letters may appear in product words (Wi-Fi, Reset, SPF, UVA) of any language.
            assert share >= (0.6 if part == "title" else 0.9), f"{topic.id}.{lang}.{part}: {dict(scripts)}"
            foreign = {s for s in scripts if s not in expected and s != "LATIN"}
            assert not foreign, f"{topic.id}.{lang}.{part} has letters of {foreign}"
            if lang in REQUIRED:
                assert any(scripts[s] for s in REQUIRED[lang]), f"{topic.id}.{lang}.{part} has no {REQUIRED[lang]}"


def test_zh_is_not_japanese_and_ja_has_kana(topics) -> None:
    for topic in topics:
        assert not {"HIRAGANA", "KATAKANA"} & set(_letter_scripts(topic.body("zh"))), topic.id
        assert _letter_scripts(topic.body("ja"))["HIRAGANA"] >= 20, topic.id


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_translations_are_complete(topics, lang: str) -> None:
    low, high = LENGTH_RATIO[lang]
    for topic in topics:
        ratio = len(topic.body(lang)) / len(topic.body("en"))
        assert low <= ratio <= high, f"{topic.id}.{lang}: {ratio:.2f} x the English length"


def test_load_topics_rejects_a_missing_language(tmp_path: Path) -> None:
    raw = json.loads(TOPICS_PATH.read_text(encoding="utf-8"))
    del raw["topics"][3]["texts"]["ko"]
    bad = tmp_path / "topics.json"
    bad.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="missing languages"):
        load_topics(bad)


def test_load_topics_rejects_an_empty_text(tmp_path: Path) -> None:
    raw = json.loads(TOPICS_PATH.read_text(encoding="utf-8"))
    raw["topics"][0]["texts"]["hi"]["body"] = "  "
    bad = tmp_path / "topics.json"
    bad.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="non-empty"):
        load_topics(bad)


# -- the documents -----------------------------------------------------------------------------

def test_documents_ids_are_unique_and_follow_the_scheme(docs, topics) -> None:
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids))
    assert len(docs) == len(topics) * len(LANGUAGES) * 2 + len(LANGUAGES)
    for doc in docs:
        assert doc.id == f"{doc.topic}.{doc.lang}.{doc.kind}"
        assert doc.lang in LANGUAGES and doc.kind in KINDS
        assert doc.text and doc.text == doc.text.strip()
    assert Counter(d.lang for d in docs) == {lang: 2 * len(topics) + 1 for lang in LANGUAGES}
    assert Counter(d.kind for d in docs) == {"title": 300, "body": 300, "handbook": 10}
    assert {d.topic for d in docs if d.kind == "handbook"} == {HANDBOOK_TOPIC}


def test_titles_are_one_line_and_handbooks_are_long(docs, topics) -> None:
    by_id = {d.id: d for d in docs}
    assert all("\n" not in d.text for d in docs if d.kind != "handbook")
    assert len(by_id["handbook.en.handbook"].text) > 5000
    assert len(by_id["handbook.en.handbook"].text.split()) > 2500  # a few thousand tokens
    for lang in LANGUAGES:
        handbook = by_id[f"{HANDBOOK_TOPIC}.{lang}.handbook"].text
        assert len(handbook) > 5000, lang  # even in Chinese, the most compact script here
        for n, topic in enumerate(topics, 1):
            assert f"{n}. {topic.title(lang)}\n\n{topic.body(lang)}" in handbook


def test_aligned_pairs_are_the_bodies_of_every_topic_in_every_language(docs, topics) -> None:
    rows = list(aligned_pairs())
    assert len(rows) == len(topics) * len(LANGUAGES)
    by_id = {d.id: d.text for d in docs}
    for item_id, lang, text in rows:
        assert by_id[f"{item_id}.{lang}.body"] == text
    items = Counter(item_id for item_id, _, _ in rows)
    assert set(items.values()) == {len(LANGUAGES)}
    assert [lang for _, lang, _ in aligned_pairs(["ko", "en"])][:2] == ["ko", "en"]
    with pytest.raises(ValueError, match="unknown language"):
        list(aligned_pairs(["xx"]))


@pytest.mark.parametrize("shards", [1, 3, 4, 7])
def test_split_covers_every_document_once_and_balances_kinds(docs, shards: int) -> None:
    parts = split_shards(docs, shards)
    assert len(parts) == shards
    flat = [d.id for part in parts for d in part]
    assert sorted(flat) == sorted(d.id for d in docs)
    for kind in KINDS:
        counts = [sum(d.kind == kind for d in part) for part in parts]
        assert max(counts) - min(counts) <= 1, (kind, counts)
    position = {d.id: i for i, d in enumerate(docs)}
    for part in parts:
        assert [position[d.id] for d in part] == sorted(position[d.id] for d in part)
    if shards > 1:
        assert all(len({d.lang for d in part}) == len(LANGUAGES) for part in parts)


# -- the written shards ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_written_shards_cover_every_document_exactly_once(tmp_path: Path, docs, fmt: str) -> None:
    info = write_corpus(tmp_path, formats=(fmt,), shards=4)
    ext = {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz"}[fmt]
    assert [p.name for p in info.files] == [f"part-{k:05d}{ext}" for k in range(4)]
    assert all(p.parent == tmp_path for p in info.files)
    rows = [row for path in info.files for row in _read_rows(path)]
    assert all(list(row) == list(COLUMNS) for row in rows)
    assert sorted(rows, key=lambda r: r["id"]) == sorted((d.as_row() for d in docs), key=lambda r: r["id"])
    assert info.num_docs == len(docs) == len(rows)
    assert info.per_lang == {lang: 61 for lang in LANGUAGES}
    assert info.per_kind == {"title": 300, "body": 300, "handbook": 10}
    assert info.total_chars == sum(len(d.text) for d in docs)
    assert info.total_bytes == sum(p.stat().st_size for p in info.files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_parquet_schema_is_five_string_columns(tmp_path: Path) -> None:
    info = write_corpus(tmp_path, shards=2)
    for path in info.files:
        schema = pq.read_schema(path)
        assert schema.names == list(COLUMNS)
        assert all(field.type == pa.string() and not field.nullable for field in schema)
        assert pq.ParquetFile(path).metadata.num_row_groups >= 2


def test_jsonl_is_utf8_not_ascii_escaped(tmp_path: Path) -> None:
    info = write_corpus(tmp_path, formats=("jsonl",), shards=1)
    raw = info.files[0].read_text(encoding="utf-8")
    assert "\\u" not in raw and "ルーター" in raw and "राउटर" in raw


def test_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    first = write_corpus(tmp_path / "a", formats=FORMATS, shards=4)
    second = write_corpus(tmp_path / "b", formats=FORMATS, shards=4)
    assert len(first.files) == len(second.files) == 12
    for a, b in zip(first.files, second.files):
        assert a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")
        assert a.read_bytes() == b.read_bytes(), a.name
    again = write_corpus(tmp_path / "a", formats=FORMATS, shards=4)  # rewriting in place: same bytes
    assert [p.read_bytes() for p in again.files] == [p.read_bytes() for p in second.files]


def test_several_formats_go_to_separate_folders(tmp_path: Path) -> None:
    info = write_corpus(tmp_path, formats=FORMATS, shards=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jsonl", "jsonl_gz", "parquet"]
    assert {p.parent.name for p in info.files} == {"jsonl", "jsonl_gz", "parquet"}
    for folder in ("jsonl", "jsonl_gz", "parquet"):
        assert len(list((tmp_path / folder).iterdir())) == 2


def test_rewriting_with_fewer_shards_removes_only_stale_shards(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("not a shard", encoding="utf-8")
    write_corpus(tmp_path, shards=6)
    info = write_corpus(tmp_path, shards=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "part-00000.parquet", "part-00001.parquet"]
    assert sum(len(_read_rows(p)) for p in info.files) == info.num_docs


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shards"):
        write_corpus(tmp_path, shards=0)
    with pytest.raises(ValueError, match="formats"):
        write_corpus(tmp_path, formats=("csv",))
    with pytest.raises(ValueError, match="formats"):
        write_corpus(tmp_path, formats=("jsonl", "jsonl"))


def test_cli_writes_the_shards_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--format", "jsonl.gz", "--shards", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_docs"] == 610 and summary["shards"] == 3 and summary["formats"] == ["jsonl.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"part-{k:05d}.jsonl.gz" for k in range(3)]
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--shards", "0"])


def test_python_dash_m_runs(tmp_path: Path) -> None:
    command = [sys.executable, "-W", "error", "-m", "sample.corpus", str(tmp_path / "out"), "--format", "all",
               "--shards", "2"]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_docs"] == 610
    assert len(list((tmp_path / "out").rglob("part-*"))) == 6
