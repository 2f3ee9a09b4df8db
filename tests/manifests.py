"""What a job recorded in its checkpoint folder, read as the job reads it (for tests that watch a running job)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.manifest import Store
from cluster.manifest.record_log import RecordLog


def recorded(checkpoints: Path) -> dict[str, dict[str, Any]]:
    """Every shard record of every job identity under ``checkpoints`` (``checkpoint.uri``), by shard path."""
    out: dict[str, dict[str, Any]] = {}
    for folder in sorted(p.parent for p in Path(checkpoints).glob("*/job.json")):
        out.update(RecordLog(Store(str(folder))).load())
    return out


def recorded_names(checkpoints: Path) -> set[str]:
    """The file names of the recorded shards."""
    return {Path(path).name for path in recorded(checkpoints)}
