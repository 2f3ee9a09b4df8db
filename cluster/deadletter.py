"""Dead-letter output: every rejected document, chunk or shard as one jsonl line."""

from __future__ import annotations

import json
import logging
from typing import Any

from embedder.storage import filesystem

log = logging.getLogger(__name__)


class DeadLetter:
    """Buffers rejected rows and writes them as ``errors-<run>-<part>.jsonl`` under ``uri``.

    Object storage has no append, so rows go out in parts of ``part_rows`` (and at close).
    Each line: ``{"shard", "row", "doc_id", "reason"}``.
    """

    def __init__(self, uri: str | None, storage_options: dict[str, Any], run_id: str, part_rows: int = 10_000) -> None:
        self.uri, self.run_id, self.part_rows = uri, run_id, part_rows
        self.buffer: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.count = 0
        if uri:
            self.fs, self.root = filesystem(uri, storage_options)
            self.fs.makedirs(self.root, exist_ok=True)

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.count += len(rows)
        if not self.uri:
            return
        self.buffer.extend(rows)
        if len(self.buffer) >= self.part_rows:
            self._write()

    def _write(self) -> None:
        path = f"{self.root.rstrip('/')}/errors-{self.run_id}-{len(self.files):05d}.jsonl"
        with self.fs.open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in self.buffer)
        self.files.append(path)
        self.buffer = []

    def flush(self) -> None:
        """Write what is buffered (before shards are recorded: a crash must not lose their rejects)."""
        if self.uri and self.buffer:
            self._write()

    def close(self) -> list[str]:
        """Write what is buffered; returns the files written."""
        self.flush()
        return self.files
