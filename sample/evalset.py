"""An aligned multilingual evaluation set built from the Django web framework's translation catalogs.

Django ships its user interface messages (form validation errors, admin pages, help texts)
translated into ~100 languages by its translation teams, as compiled gettext catalogs inside the
PyPI package: ``django/**/locale/<lang>/LC_MESSAGES/{django,djangojs}.mo``. Each English message
(the ``msgid``) and its translations are the same sentence in several languages, which is what
a cross-lingual retrieval check needs: a query in one language should find the same message in
another. This module reads those catalogs from the installed ``django`` package (without importing
Django) and writes the messages that are translated in every chosen language:

* one row per (item, language): ``item_id``, ``lang``, ``text``, ``source`` (``django-<version>:<catalog>``);
* placeholders (``%(name)s``, ``%s``, ``{name}``) and the quotes left empty around them are removed,
  so that no untranslated token ties the languages together; messages with HTML, a gettext
  context or plural forms are skipped;
* the English text must have at least ``min_words`` words (default 4) after that, and no more than a
  third of the original words may be placeholders;
* an item is dropped when its text in some language is identical to an earlier item's text in
  that language (the ground truth would be ambiguous) or equal to the English (untranslated);
* ``max_items`` keeps a deterministic pseudo-random subset (by item id hash); rows are written
  in item id order, languages in the order given.

The output depends only on the Django version (recorded in ``source``). Licence: Django and its
translations are BSD-3-Clause (see ``sample/README.md``).

Command line::

    python -m sample.evalset OUT.jsonl [--langs en,de,fr,...] [--max-items N] [--min-words 4]
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Default languages: six scripts (Latin, Cyrillic, Han, Japanese kana/kanji, Arabic, Hangul, Hebrew).
DEFAULT_LANGS: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "ko", "he")
#: Our language code -> Django's locale folder, where they differ (others: ``pt-br`` -> ``pt_BR``).
LOCALE_DIRS = {"zh": "zh_Hans", "zh-hans": "zh_Hans", "zh-hant": "zh_Hant", "zh-tw": "zh_Hant", "sr-latn": "sr_Latn"}
DOMAINS = ("django", "djangojs")
SOURCE_LANG = "en"
MIN_WORDS = 4
#: Skip a message whose words are more than this share placeholders (little text would be left).
MAX_PLACEHOLDER_SHARE = 1 / 3

_PLACEHOLDER = re.compile(r"%\([^)]*\)[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGc]|%[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGc]"
                          r"|\{[^{}]*\}")
_OPEN_QUOTES = "“\"'«「『„‘‚‹《〈"
_CLOSE_QUOTES = "”\"'»」』“’‘›》〉"
_EMPTY_QUOTES = re.compile(f"[{re.escape(_OPEN_QUOTES)}][\\s\u00a0\u202f]*[{re.escape(_CLOSE_QUOTES)}]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?。、，．])(?=\s|$)")
_SPACES = re.compile(r"[\s\u00a0\u202f]+")


class EvalsetError(RuntimeError):
    """The source catalogs are missing, or too few items survive the filters."""


@dataclass(frozen=True)
class EvalsetInfo:
    """What :func:`build_evalset` wrote."""

    path: Path
    items: int
    langs: tuple[str, ...]
    rows: int
    source: str

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "items": self.items, "langs": list(self.langs), "rows": self.rows,
                "source": self.source}


def locale_dir(lang: str) -> str:
    """Django's locale folder name for a language code (``zh`` -> ``zh_Hans``, ``pt-br`` -> ``pt_BR``)."""
    key = lang.lower().replace("_", "-")
    if key in LOCALE_DIRS:
        return LOCALE_DIRS[key]
    base, _, region = key.partition("-")
    return f"{base}_{region.upper() if len(region) == 2 else region.capitalize()}" if region else base


def django_root() -> Path:
    """The installed ``django`` package folder (not imported)."""
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.submodule_search_locations:
        raise EvalsetError("the evaluation set is built from Django's translation catalogs, but the 'django' "
                           "package is not installed: pip install 'django>=4.2' (it is in the [test] extra), "
                           "or use the bundled pairs (python -m jobs.evaluate --pairs sample)")
    return Path(next(iter(spec.submodule_search_locations)))


def django_version() -> str:
    try:
        return importlib.metadata.version("django")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - found by path, not installed
        return "unknown"


def clean(text: str) -> str:
    """Remove placeholders and the quotes left empty around them; normalize spaces."""
    text = _PLACEHOLDER.sub(" ", html.unescape(text).replace("%%", "%"))
    text = _EMPTY_QUOTES.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip(" :")


def _catalog_files(root: Path) -> list[tuple[str, str, Path]]:
    """``(catalog, locale_dir, path)`` of every compiled catalog under ``root``, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        parts = Path(dirpath).relative_to(root).parts
        if len(parts) < 3 or parts[-1] != "LC_MESSAGES" or parts[-3] != "locale":
            continue
        for name in sorted(filenames):
            domain = name[:-3]
            if name.endswith(".mo") and domain in DOMAINS:
                catalog = "/".join((*parts[:-3], domain)) if parts[:-3] else domain
                out.append((catalog, parts[-2], Path(dirpath) / name))
    return sorted(out)


def _messages(path: Path) -> Iterator[tuple[str, str]]:
    """Singular, context-free, HTML-free ``(msgid, translation)`` pairs of one ``.mo`` file."""
    with path.open("rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - the parsed table, no other public accessor
    for key, value in catalog.items():
        if not isinstance(key, str) or not key or not value or "\x04" in key or "<" in key:
            continue
        yield key, value


def aligned_items(langs: Sequence[str] = DEFAULT_LANGS, *, min_words: int = MIN_WORDS,
                  root: Path | None = None) -> list[tuple[str, str, dict[str, str]]]:
    """Every usable item: ``(item_id, catalog, {lang: text})``, sorted by item id (see the module doc)."""
    langs = tuple(dict.fromkeys(langs))
    if SOURCE_LANG not in langs:
        raise ValueError(f"langs must include {SOURCE_LANG!r} (the messages' source language), got {list(langs)}")
    if len(langs) < 2:
        raise ValueError("an aligned set needs at least two languages")
    root = django_root() if root is None else root
    wanted = {locale_dir(lang): lang for lang in langs if lang != SOURCE_LANG}
    translations: dict[str, dict[str, str]] = {lang: {} for lang in wanted.values()}
    catalog_of: dict[str, str] = {}
    found: set[str] = set()
    for catalog, folder, path in _catalog_files(root):
        lang = wanted.get(folder)
        if lang is None:
            continue
        found.add(lang)
        for msgid, text in _messages(path):
            translations[lang].setdefault(msgid, text)  # first catalog in sorted order wins
            catalog_of.setdefault(msgid, catalog)
    missing = sorted(set(wanted.values()) - found)
    if missing:
        raise EvalsetError(f"Django {django_version()} at {root} has no catalogs for {missing}")
    items: list[tuple[str, str, dict[str, str]]] = []
    seen: dict[str, set[str]] = {lang: set() for lang in langs}
    candidates = set.intersection(*(set(t) for t in translations.values()))
    by_english: dict[str, str] = {}
    for msgid in sorted(candidates):
        english = clean(msgid)
        share = len(_PLACEHOLDER.findall(msgid)) / max(len(msgid.split()), 1)
        if len(english.split()) >= min_words and share <= MAX_PLACEHOLDER_SHARE:
            by_english.setdefault(english, msgid)
    for english, msgid in sorted(by_english.items(), key=lambda kv: _item_id(kv[0])):
        texts = {SOURCE_LANG: english}
        for lang in wanted.values():
            texts[lang] = clean(translations[lang][msgid])
        texts = {lang: texts[lang] for lang in langs}
        if any(not t or (lang != SOURCE_LANG and t == english) or t in seen[lang] for lang, t in texts.items()):
            continue
        for lang, t in texts.items():
            seen[lang].add(t)
        items.append((_item_id(english), catalog_of[msgid], texts))
    return items


def _item_id(english: str) -> str:
    return "dj-" + hashlib.blake2b(english.encode("utf-8"), digest_size=5).hexdigest()


def build_evalset(out_path: str | Path, langs: Sequence[str] = DEFAULT_LANGS, max_items: int | None = None, *,
                  min_words: int = MIN_WORDS, min_items: int = 10, root: Path | None = None) -> EvalsetInfo:
    """Write the aligned set as JSON lines ``{"item_id", "lang", "text", "source"}`` (deterministic).

    Args:
        out_path: The ``.jsonl`` file to write (parents are created).
        langs: Language codes, ``en`` included; e.g. ``zh`` (simplified), ``zh-hant``, ``pt-br``, ``hi``.
        max_items: Keep this many items (a deterministic subset); None = all.
        min_words: Least number of words of the English text.
        min_items: Fail when fewer items survive (e.g. a language that is barely translated).
        root: Another folder to read catalogs from (tests); default: the installed Django.

    Raises:
        EvalsetError: Django is not installed, lacks a language, or too few items survive.
    """
    langs = tuple(dict.fromkeys(langs))
    items = aligned_items(langs, min_words=min_words, root=root)
    if max_items is not None:
        items = items[:max_items]  # already in hash order: a deterministic, unbiased subset
    if len(items) < min_items:
        raise EvalsetError(f"only {len(items)} messages are translated into all of {list(langs)} "
                           f"(at least {min_items} needed); drop the least translated language")
    source = f"django-{django_version()}"
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"item_id": item_id, "lang": lang, "text": texts[lang], "source": f"{source}:{catalog}"},
                        ensure_ascii=False)
             for item_id, catalog, texts in sorted(items) for lang in langs]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return EvalsetInfo(path=out, items=len(items), langs=langs, rows=len(lines), source=source)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the set and print a JSON summary to stdout."""
    p = argparse.ArgumentParser(prog="python -m sample.evalset",
                                description="Build an aligned multilingual evaluation set (item_id, lang, text) "
                                            "from the translation catalogs of the installed Django package.")
    p.add_argument("out", type=Path, help="output .jsonl file")
    p.add_argument("--langs", default=",".join(DEFAULT_LANGS),
                   help=f"comma-separated language codes, en included (default: {','.join(DEFAULT_LANGS)})")
    p.add_argument("--max-items", type=int, default=None, help="keep at most this many items (default: all)")
    p.add_argument("--min-words", type=int, default=MIN_WORDS, help=f"least English words (default: {MIN_WORDS})")
    args = p.parse_args(argv)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    try:
        info = build_evalset(args.out, langs, args.max_items, min_words=args.min_words)
    except (EvalsetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(info.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
