"""The bundled multilingual sample corpus: a fictional how-to knowledge base in ten languages.

``sample/topics.json`` holds 30 short articles (a title and a one-paragraph body), each written
in English and translated into German, French, Spanish, Russian, Chinese, Japanese, Arabic,
Hindi and Korean, so that the same content exists in every language. From it this module builds,
deterministically, three kinds of documents:

* ``title``: one line, the article's title (``<topic>.<lang>.title``);
* ``body``: one paragraph, the article's body (``<topic>.<lang>.body``);
* ``handbook``: one per language, several pages: all articles of that language as numbered
  sections under a handbook title (``handbook.<lang>.handbook``, topic ``handbook``).

That is ``30 x 10 x 2 + 10 = 610`` documents whose lengths range from one line to a few thousand
tokens. :func:`write_corpus` writes them as shards ``part-00000.<ext>``, ... with the columns
``id``, ``text``, ``lang``, ``topic``, ``kind`` (all strings); :func:`aligned_pairs` gives the
body of each topic in each language, the aligned set used for cross-lingual retrieval checks.

Command line::

    python -m sample.corpus OUT_DIR [--format parquet|jsonl|jsonl.gz|all] [--shards N]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: The languages of the corpus, in document order.
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "ko")
#: The values of the ``kind`` column.
KINDS: tuple[str, ...] = ("title", "body", "handbook")
#: Output formats, as accepted by :func:`write_corpus` (``all`` on the command line means all three).
FORMATS: tuple[str, ...] = ("parquet", "jsonl", "jsonl.gz")
#: The columns of every shard, in order.
COLUMNS: tuple[str, ...] = ("id", "text", "lang", "topic", "kind")
#: The ``topic`` value of the handbook documents (never a topic id).
HANDBOOK_TOPIC = "handbook"
#: The hand-written source text.
TOPICS_PATH = Path(__file__).with_name("topics.json")

#: Sub-folder per format when several formats are written at once (a reader that lists a folder
#: recursively would otherwise see every document once per format).
FORMAT_DIRS: Mapping[str, str] = {"parquet": "parquet", "jsonl": "jsonl", "jsonl.gz": "jsonl_gz"}
#: Rows per parquet row group: small, so that readers get several groups per shard.
ROW_GROUP_ROWS = 64

SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=False) for name in COLUMNS],
    metadata={b"sample.corpus": b"1"},
)
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SHARD_NAME = re.compile(r"part-(\d{5})\.(parquet|jsonl|jsonl\.gz)")


@dataclass(frozen=True)
class Topic:
    """One article of the knowledge base, in every language.

    Attributes:
        id: Stable slug, e.g. ``router-reset``.
        titles: Language code -> one-line title.
        bodies: Language code -> one-paragraph body.
    """

    id: str
    titles: Mapping[str, str]
    bodies: Mapping[str, str]

    def title(self, lang: str) -> str:
        """The title in ``lang``."""
        return self.titles[lang]

    def body(self, lang: str) -> str:
        """The body in ``lang``."""
        return self.bodies[lang]


@dataclass(frozen=True)
class Document:
    """One row of the corpus (the fields are the shard columns)."""

    id: str
    text: str
    lang: str
    topic: str
    kind: str

    def as_row(self) -> dict[str, str]:
        """The row as a dict with the keys of :data:`COLUMNS`, in order."""
        return {"id": self.id, "text": self.text, "lang": self.lang, "topic": self.topic, "kind": self.kind}


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`write_corpus` wrote.

    Attributes:
        out_dir: The output folder.
        num_docs: Number of documents (each written once per format).
        per_lang: Language code -> number of documents.
        per_kind: Kind (title, body, handbook) -> number of documents.
        shards: Number of shards per format.
        formats: The formats written.
        files: The shard files written, format by format, in shard order.
        total_chars: Sum of the text lengths in characters.
    """

    out_dir: Path
    num_docs: int
    per_lang: dict[str, int]
    per_kind: dict[str, int]
    shards: int
    formats: tuple[str, ...]
    files: tuple[Path, ...]
    total_chars: int

    @property
    def total_bytes(self) -> int:
        """Size of all files written, in bytes."""
        return sum(path.stat().st_size for path in self.files)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (paths as strings, with each file's size)."""
        return {
            "out_dir": str(self.out_dir),
            "num_docs": self.num_docs,
            "per_lang": dict(self.per_lang),
            "per_kind": dict(self.per_kind),
            "shards": self.shards,
            "formats": list(self.formats),
            "total_chars": self.total_chars,
            "files": [{"path": str(path), "bytes": path.stat().st_size} for path in self.files],
            "total_bytes": self.total_bytes,
        }


@dataclass(frozen=True)
class _Source:
    topics: tuple[Topic, ...]
    handbook: Mapping[str, tuple[str, str]]  # lang -> (title, intro)


def _text(value: Any, where: str, *, one_line: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected non-empty text, got {value!r}")
    if value != value.strip():
        raise ValueError(f"{where}: leading or trailing whitespace")
    if one_line and "\n" in value:
        raise ValueError(f"{where}: must be one line")
    return value


def _read(path: str | Path | None = None) -> _Source:
    """Parse and validate ``topics.json`` (default: the bundled :data:`TOPICS_PATH`)."""
    path = Path(path) if path is not None else TOPICS_PATH
    raw = json.loads(path.read_text(encoding="utf-8"))
    if tuple(raw.get("languages", ())) != LANGUAGES:
        raise ValueError(f"{path}: 'languages' must be {list(LANGUAGES)}, got {raw.get('languages')!r}")
    handbook: dict[str, tuple[str, str]] = {}
    for lang in LANGUAGES:
        entry = raw.get("handbook", {}).get(lang)
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: handbook: no entry for {lang!r}")
        handbook[lang] = (_text(entry.get("title"), f"{path}: handbook.{lang}.title", one_line=True),
                          _text(entry.get("intro"), f"{path}: handbook.{lang}.intro", one_line=True))
    topics: list[Topic] = []
    seen: set[str] = set()
    for i, item in enumerate(raw.get("topics", [])):
        topic_id = item.get("id")
        if not isinstance(topic_id, str) or not _SLUG.fullmatch(topic_id) or topic_id == HANDBOOK_TOPIC:
            raise ValueError(f"{path}: topics[{i}]: bad id {topic_id!r} (a lowercase slug, not {HANDBOOK_TOPIC!r})")
        if topic_id in seen:
            raise ValueError(f"{path}: topics[{i}]: duplicate id {topic_id!r}")
        seen.add(topic_id)
        texts = item.get("texts", {})
        missing = [lang for lang in LANGUAGES if lang not in texts]
        extra = sorted(set(texts) - set(LANGUAGES))
        if missing or extra:
            raise ValueError(f"{path}: topic {topic_id!r}: missing languages {missing}, unknown {extra}")
        titles = {lang: _text(texts[lang].get("title"), f"{path}: {topic_id}.{lang}.title", one_line=True)
                  for lang in LANGUAGES}
        bodies = {lang: _text(texts[lang].get("body"), f"{path}: {topic_id}.{lang}.body", one_line=True)
                  for lang in LANGUAGES}
        topics.append(Topic(id=topic_id, titles=titles, bodies=bodies))
    if not topics:
        raise ValueError(f"{path}: no topics")
    return _Source(topics=tuple(topics), handbook=handbook)


def load_topics(path: str | Path | None = None) -> list[Topic]:
    """The topics of ``topics.json`` in file order, validated.

    Args:
        path: Another topics file with the same layout; default: the bundled one.

    Raises:
        ValueError: A language is missing or empty, an id is not a unique slug, or the file
            does not have the expected layout.
    """
    return list(_read(path).topics)


def handbook_text(lang: str, topics: Sequence[Topic], title: str, intro: str) -> str:
    """The handbook of one language: title, intro, then every topic as a numbered section."""
    sections = [f"{n}. {topic.title(lang)}\n\n{topic.body(lang)}" for n, topic in enumerate(topics, 1)]
    return "\n\n".join([title, intro, *sections])


def documents(path: str | Path | None = None) -> list[Document]:
    """Every document of the corpus, in canonical order.

    The order is: for each topic (file order), for each language (:data:`LANGUAGES`), its title
    then its body; then one handbook per language. Within a shard, documents keep this order.

    Args:
        path: Another topics file; default: the bundled one.
    """
    source = _read(path)
    docs: list[Document] = []
    for topic in source.topics:
        for lang in LANGUAGES:
            for kind, text in (("title", topic.title(lang)), ("body", topic.body(lang))):
                docs.append(Document(id=f"{topic.id}.{lang}.{kind}", text=text, lang=lang, topic=topic.id, kind=kind))
    for lang in LANGUAGES:
        title, intro = source.handbook[lang]
        text = handbook_text(lang, source.topics, title, intro)
        docs.append(Document(id=f"{HANDBOOK_TOPIC}.{lang}.handbook", text=text, lang=lang, topic=HANDBOOK_TOPIC,
                             kind="handbook"))
    return docs


def aligned_pairs(langs: Iterable[str] | None = None, *, path: str | Path | None = None
                  ) -> Iterator[tuple[str, str, str]]:
    """Rows ``(item_id, lang, text)`` of the aligned evaluation set.

    One row per topic and language: the topic's body, with the topic id as ``item_id``, so that
    rows with the same ``item_id`` are translations of each other (a query in one language should
    retrieve the same item in the others).

    Args:
        langs: Languages to include, in this order; default: all of :data:`LANGUAGES`.
        path: Another topics file; default: the bundled one.

    Raises:
        ValueError: An unknown language code.
    """
    wanted = tuple(langs) if langs is not None else LANGUAGES
    unknown = [lang for lang in wanted if lang not in LANGUAGES]
    if unknown:
        raise ValueError(f"unknown language(s) {unknown}; the corpus has {list(LANGUAGES)}")
    for topic in _read(path).topics:
        for lang in wanted:
            yield topic.id, lang, topic.body(lang)


def _mix_key(doc: Document) -> tuple[str, bytes]:
    return doc.kind, hashlib.blake2b(doc.id.encode("utf-8"), digest_size=8).digest()


def split_shards(docs: Sequence[Document], shards: int) -> list[list[Document]]:
    """Split ``docs`` into ``shards`` lists, every document in exactly one.

    The documents are grouped by kind, ordered by a hash of their id within each kind, and dealt
    round-robin in that order (one running counter across kinds). So every shard gets a mix of
    languages and topics, the counts of each kind differ by at most one between shards (the long
    handbooks are spread evenly), and the split depends only on the ids and the shard count.
    Within a shard, documents keep their order in ``docs``.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    ranked = sorted(range(len(docs)), key=lambda i: _mix_key(docs[i]))
    shard_of = {index: rank % shards for rank, index in enumerate(ranked)}
    parts: list[list[Document]] = [[] for _ in range(shards)]
    for index, doc in enumerate(docs):
        parts[shard_of[index]].append(doc)
    return parts


def _extension(fmt: str) -> str:
    return {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz"}[fmt]


def _encode(docs: Sequence[Document], fmt: str) -> bytes:
    """The bytes of one shard; identical for identical input (no timestamps, fixed settings)."""
    if fmt == "parquet":
        table = pa.Table.from_pylist([doc.as_row() for doc in docs], schema=SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="snappy")
        return sink.getvalue().to_pybytes()
    lines = "".join(json.dumps(doc.as_row(), ensure_ascii=False) + "\n" for doc in docs).encode("utf-8")
    if fmt == "jsonl":
        return lines
    if fmt == "jsonl.gz":
        return gzip.compress(lines, compresslevel=9, mtime=0)
    raise ValueError(f"unknown format {fmt!r}; use one of {list(FORMATS)}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a hidden temporary file and rename, so readers never see a partial shard."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale(folder: Path, fmt: str, shards: int) -> None:
    """Delete ``part-NNNNN`` shards of ``fmt`` beyond ``shards`` left by an earlier, larger run."""
    for child in folder.iterdir():
        match = _SHARD_NAME.fullmatch(child.name)
        if match and match.group(2) == fmt and int(match.group(1)) >= shards and child.is_file():
            child.unlink()


def write_corpus(out_dir: str | Path, *, formats: Sequence[str] = ("parquet",), shards: int = 4,
                 topics_path: str | Path | None = None) -> CorpusInfo:
    """Write the corpus as ``shards`` files per format.

    With one format the shards go straight into ``out_dir`` (``part-00000.parquet``, ...). With
    several, each format gets its own sub-folder (``parquet/``, ``jsonl/``, ``jsonl_gz/``) so that
    a reader listing ``out_dir`` recursively does not see every document several times. Output is
    deterministic: the same input gives byte-identical files. Shards of the same format with an
    index ``>= shards`` (from an earlier run with more shards) are removed; nothing else is.

    Args:
        out_dir: Output folder (created if missing).
        formats: Any of ``parquet``, ``jsonl``, ``jsonl.gz``.
        shards: Number of shards per format (>= 1; a shard may be empty if ``shards`` exceeds
            the number of documents).
        topics_path: Another topics file; default: the bundled one.

    Returns:
        A :class:`CorpusInfo` with the counts and the files written.

    Raises:
        ValueError: An unknown or repeated format, ``shards < 1``, or an invalid topics file.
    """
    formats = tuple(formats)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if not formats or unknown or len(set(formats)) != len(formats):
        raise ValueError(f"formats must be distinct values of {list(FORMATS)}, got {list(formats)}")
    docs = documents(topics_path)
    parts = split_shards(docs, shards)
    out = Path(out_dir)
    files: list[Path] = []
    for fmt in formats:
        folder = out if len(formats) == 1 else out / FORMAT_DIRS[fmt]
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder, fmt, shards)
        for k, part in enumerate(parts):
            path = folder / f"part-{k:05d}{_extension(fmt)}"
            _write_atomic(path, _encode(part, fmt))
            files.append(path)
    per_lang = Counter(doc.lang for doc in docs)
    per_kind = Counter(doc.kind for doc in docs)
    return CorpusInfo(
        out_dir=out,
        num_docs=len(docs),
        per_lang={lang: per_lang[lang] for lang in LANGUAGES},
        per_kind={kind: per_kind[kind] for kind in KINDS},
        shards=shards,
        formats=formats,
        files=tuple(files),
        total_chars=sum(len(doc.text) for doc in docs),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the corpus and print a JSON summary to stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m sample.corpus",
        description="Write the bundled multilingual sample corpus (30 topics x 10 languages, "
                    "titles, bodies and one handbook per language) as shards.")
    parser.add_argument("out_dir", type=Path, help="output folder (created if missing)")
    parser.add_argument("--format", dest="fmt", choices=[*FORMATS, "all"], default="parquet",
                        help="shard format; 'all' writes each format into its own sub-folder (default: parquet)")
    parser.add_argument("--shards", type=int, default=4, help="number of shards per format (default: 4)")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error(f"--shards must be >= 1, got {args.shards}")
    formats = FORMATS if args.fmt == "all" else (args.fmt,)
    info = write_corpus(args.out_dir, formats=formats, shards=args.shards)
    json.dump(info.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
