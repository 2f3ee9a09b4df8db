"""The aligned evaluation set of ``jobs.evaluate``: the same items in several languages, read from a file or the
bundled sample."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder import evaluation as ev


class PairsError(ValueError):
    """The pairs file cannot be used; the message says why."""


@dataclass(frozen=True)
class Pairs:
    """The aligned set: row i is text ``texts[i]`` of item ``item_ids[i]`` in language ``langs[i]``."""

    item_ids: np.ndarray  # str
    langs: np.ndarray  # str
    texts: list[str]
    languages: tuple[str, ...]  # in display order

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def items(self) -> int:
        return len(set(self.item_ids.tolist()))


def read_pairs(spec: str, langs: Sequence[str] | None = None, max_items: int | None = None) -> Pairs:
    """Load PAIRS (a file, or ``sample``), keep ``langs`` (in that order) and the first ``max_items`` items.

    Raises:
        PairsError: Unreadable file, missing columns, empty or duplicate rows, unknown languages.
    """
    rows = _read_rows(spec, langs)
    if not rows:
        raise PairsError(f"{spec}: no rows")
    seen: set[tuple[str, str]] = set()
    for item_id, lang, text in rows:
        if not item_id or not lang or not isinstance(text, str) or not text.strip():
            raise PairsError(f"{spec}: a row has an empty item_id, lang or text: {(item_id, lang, text)!r}")
        if (item_id, lang) in seen:
            raise PairsError(f"{spec}: item {item_id!r} appears twice in language {lang!r}")
        seen.add((item_id, lang))
    present = list(dict.fromkeys(lang for _, lang, _ in rows))
    if langs:
        unknown = [lang for lang in langs if lang not in present]
        if unknown:
            raise PairsError(f"{spec}: no rows in language(s) {unknown}; the file has {present}")
        order = tuple(dict.fromkeys(langs))
    else:
        order = tuple(present)
    rows = [r for r in rows if r[1] in order]
    if max_items is not None:
        keep = set(sorted({r[0] for r in rows})[:max_items])
        rows = [r for r in rows if r[0] in keep]
    rank = {lang: i for i, lang in enumerate(order)}
    rows.sort(key=lambda r: (rank[r[1]], r[0]))
    return Pairs(item_ids=np.array([r[0] for r in rows], dtype=object),
                 langs=np.array([r[1] for r in rows], dtype=object),
                 texts=[r[2] for r in rows], languages=order)


def _read_rows(spec: str, langs: Sequence[str] | None) -> list[tuple[str, str, str]]:
    if spec == "sample":
        from sample.corpus import aligned_pairs

        try:
            return [(str(i), str(lang), t) for i, lang, t in aligned_pairs(langs or None)]
        except ValueError as e:
            raise PairsError(f"--pairs sample: {e}") from e
    path = Path(spec)
    if not path.is_file():
        raise PairsError(f"pairs file {spec} not found (use a .jsonl/.parquet file, or 'sample')")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            missing = [c for c in ("item_id", "lang", "text") if c not in table.column_names]
            if missing:
                raise PairsError(f"{spec}: missing column(s) {missing}; it has {table.column_names}")
            cols = [table.column(c).to_pylist() for c in ("item_id", "lang", "text")]
            return [(_str(i), _str(lang), t) for i, lang, t in zip(*cols)]
        if name.endswith((".jsonl", ".jsonl.gz", ".json")):
            opener = gzip.open if name.endswith(".gz") else open
            out = []
            with opener(path, "rt", encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if not isinstance(row, dict) or any(c not in row for c in ("item_id", "lang", "text")):
                        raise PairsError(f"{spec}:{n}: expected an object with item_id, lang and text, "
                                         f"got {line[:200]!r}")
                    out.append((_str(row["item_id"]), _str(row["lang"]), row["text"]))
            return out
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PairsError(f"cannot read pairs file {spec}: {e}") from e
    except Exception as e:  # pyarrow errors
        if isinstance(e, PairsError):
            raise
        raise PairsError(f"cannot read pairs file {spec}: {type(e).__name__}: {e}") from e
    raise PairsError(f"pairs file {spec}: use .jsonl, .jsonl.gz or .parquet")


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def averages(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``all`` pairs and ``cross_lingual`` pairs (query language != document language), per mode."""
    modes = [m for m in ("dense", "sparse", "hybrid") if rows and m in rows[0]]
    cross = [r for r in rows if r["query_lang"] != r["doc_lang"]]
    out = {"all": {"pairs": len(rows), **{m: ev.mean_metrics(r[m] for r in rows) for m in modes}}}
    if cross:
        out["cross_lingual"] = {"pairs": len(cross), **{m: ev.mean_metrics(r[m] for r in cross) for m in modes}}
    return out


__all__ = ["Pairs", "PairsError", "averages", "read_pairs"]
