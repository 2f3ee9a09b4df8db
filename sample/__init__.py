"""The bundled multilingual sample corpus (``python -m sample.corpus OUT_DIR``).

The text lives in ``sample/topics.json``; :mod:`sample.corpus` turns it into sharded documents.
Names from :mod:`sample.corpus` are re-exported lazily, so that ``python -m sample.corpus`` does
not import the module twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CorpusInfo", "Document", "Topic", "aligned_pairs", "documents", "load_topics", "write_corpus"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sample import corpus

        return getattr(corpus, name)
    raise AttributeError(f"module 'sample' has no attribute {name!r}")
