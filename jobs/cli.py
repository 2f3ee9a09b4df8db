"""What every entry point shares: exit codes, logging, config loading and the cheap start-up checks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from jobs.config import ConfigError, JobConfig, load_config

if TYPE_CHECKING:
    from cluster.driver import Plan

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_REJECTED = 0, 1, 2, 3


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "filelock", "transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_or_none(path: str | None, overrides: Sequence[str], log: logging.Logger) -> JobConfig | None:
    """The validated config, or None after logging why it is invalid."""
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        log.error("invalid config: %s", e)
        return None


def plan_or_exit_code(cfg: JobConfig, log: logging.Logger,
                      check: Callable[[JobConfig], Any] | None = None) -> Plan | int:
    """Run the start-up checks and plan the run; an exit code when something stops it before any work."""
    from cluster import driver
    from cluster.milvus import MilvusConnectError
    from cluster.source import SourceError

    try:
        if check is not None:
            check(cfg)
        return driver.plan(cfg)
    except (ValueError, TypeError, FileNotFoundError, ImportError, SourceError) as e:  # source, model, dims, schema
        log.error("cannot start: %s", e)
        return EXIT_INVALID
    except MilvusConnectError as e:
        log.error("cannot reach Milvus: %s", e)
        return EXIT_FAILED
