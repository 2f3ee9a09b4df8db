"""Fixtures for end-to-end job tests: a small aligned corpus and config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

TOPICS = ["router-reset", "coffee-descaling", "bicycle-chain", "sourdough-bread", "burn-first-aid", "tyre-pressure"]


@pytest.fixture(scope="session")
def small_corpus() -> list[dict[str, str]]:
    """Bodies of six topics in ten languages, one title, and one long English handbook (~3k tokens)."""
    from sample.corpus import documents

    docs = documents()
    rows = [d for d in docs if d.kind == "body" and d.topic in TOPICS]
    rows += [d for d in docs if d.kind == "title"][:3]
    rows += [d for d in docs if d.kind == "handbook" and d.lang == "en"]
    return [{"id": d.id, "text": d.text, "lang": d.lang, "topic": d.topic, "kind": d.kind} for d in rows]


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(sections, allow_unicode=True), encoding="utf-8")
    return path
