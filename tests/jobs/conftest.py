"""Helpers for end-to-end job tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(sections, allow_unicode=True), encoding="utf-8")
    return path
