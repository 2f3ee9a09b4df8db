"""What every entry point shares: exit codes, logging, config loading, signals, and running a plan.

Exit codes: 0 clean; 3 finished, but some input was rejected; 2 could not start (invalid config or
input, an unreachable S3 or Milvus, another run holding the target: nothing was done); 1 the run
failed (finished shards are recorded: running again resumes); 130 / 143 stopped by SIGINT / SIGTERM
(also resumable).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.config import ConfigError, JobConfig, load_config

if TYPE_CHECKING:
    from cluster.plan import Plan

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_REJECTED = 0, 1, 2, 3
log = logging.getLogger("jobs")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "filelock", "transformers", "sentence_transformers", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_or_none(path: str | None, overrides: Sequence[str], logger: logging.Logger) -> JobConfig | None:
    """The validated config, or None after logging why it is invalid."""
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        logger.error("invalid config: %s", e)
        return None


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: not caught by `except Exception`
    """SIGTERM or SIGINT arrived: the run stops through its failure path."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name


class Signals:
    """Turns the first SIGTERM / SIGINT into :class:`Interrupted` in the main thread; later ones are logged."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old = signal.signal(sig, self._handle)
            if old is not self._handle:
                self.previous.setdefault(sig, old)
        return self

    def restore(self) -> None:
        """Give the signals back to whoever had them (an entry point called in-process, e.g. by tests)."""
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            log.warning("%s again: already stopping", signal.Signals(signum).name)
            return
        self.received = signum
        log.error("%s received: stopping (in-flight work is abandoned; finished shards are recorded)",
                  signal.Signals(signum).name)
        raise Interrupted(signum)

    def hold(self) -> None:
        """From now on (the clean-up), signals are only logged."""
        if self.received is None:
            self.received = -1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)


def plan_or_exit_code(cfg: JobConfig, logger: logging.Logger,
                      check: Callable[[JobConfig, Plan], Any] | None = None) -> Plan | int:
    """Plan the run and run ``check(cfg, plan)``; an exit code when something stops it before any work."""
    from cluster.manifest import LeaseHeld, ManifestCorrupt, StoreUnreachable
    from cluster.milvus import MilvusConnectError
    from cluster.plan import plan
    from cluster.source import SourceError

    the_plan = None
    try:
        the_plan = plan(cfg)
        if check is not None:
            check(cfg, the_plan)
        return the_plan
    except (ValueError, TypeError, FileNotFoundError, ImportError, SourceError) as e:  # source, model, dims, schema
        logger.error("cannot start: %s", e)
    except MilvusConnectError as e:
        logger.error("cannot start: Milvus is unreachable: %s", e)
    except LeaseHeld as e:
        logger.error("cannot start: %s", e)
    except (ManifestCorrupt, StoreUnreachable) as e:
        logger.error("cannot start: %s", e)
    if the_plan is not None:
        the_plan.close()
    return EXIT_INVALID


def write_summary(path: Path | None, summary: dict[str, object] | None, *, failed: bool = False,
                  interrupted: str | None = None) -> None:
    """The run summary as JSON (also after a failure: what was done until then, with ``failed: true``)."""
    if path is None or (summary is None and not interrupted):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(summary or {})
    if failed:  # on success: exactly the logged summary
        data["failed"] = True
    if interrupted:
        data["interrupted"] = interrupted
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def execute(cfg: JobConfig, logger: logging.Logger, summary_path: Path | None, *,
            check: Callable[[JobConfig, Plan], Any] | None = None,
            after: Callable[[Plan, dict[str, object]], dict[str, object]] | None = None) -> int:
    """Plan, start Ray, run, then ``after(plan, summary)``; signals, exit codes and clean-up in one place.

    Nothing is left behind on any path: the lease is released, the job's milvus-lite server
    stopped, and a local Ray this process started is shut down.
    """
    from cluster.errors import DeleteRefused, IncompleteRun, LeaseLost, RejectedInput
    from cluster.run import Run
    from jobs.ray_session import check_cluster_paths, init_ray

    signals = Signals().install()
    the_plan: Plan | int | None = None
    summary: dict[str, object] | None = None
    ray_started = False
    try:
        problem = check_cluster_paths(cfg)
        if problem:
            logger.error("cannot start: %s", problem)
            return EXIT_INVALID
        the_plan = plan_or_exit_code(cfg, logger, check)
        if isinstance(the_plan, int):
            return the_plan
        ray_started = init_ray(cfg)
        signals.install()  # Ray's start-up may have installed handlers of its own
        summary = Run(cfg, the_plan).execute()
        if after is not None:
            summary = after(the_plan, summary)
    except Interrupted as e:
        logger.error("stopped by %s; finished shards are recorded: run again to resume", e.name)
        write_summary(summary_path, getattr(e, "summary", None) or summary, failed=True, interrupted=e.name)
        return 128 + e.signum
    except RejectedInput as e:
        logger.error("stopped: %s (finished shards are recorded; fix the input and run again to resume)", e)
        write_summary(summary_path, getattr(e, "summary", None), failed=True)
        return EXIT_FAILED
    except (IncompleteRun, LeaseLost) as e:
        logger.error("stopped: %s", e)
        write_summary(summary_path, getattr(e, "summary", None), failed=True)
        return EXIT_FAILED
    except DeleteRefused as e:
        logger.error("stopped: %s", e)
        write_summary(summary_path, getattr(e, "summary", None), failed=True)
        return EXIT_INVALID
    except Exception as e:
        logger.exception("the run failed")
        write_summary(summary_path, getattr(e, "summary", None) or summary, failed=True)
        return EXIT_FAILED
    finally:
        signals.hold()
        _clean_up(the_plan, ray_started, logger)
        signals.restore()
    write_summary(summary_path, summary)
    assert summary is not None
    rejected = summary["docs_failed"] or summary["chunks_failed"] or summary["shards_failed"] or \
        summary.get("deletes_failed")
    return EXIT_REJECTED if rejected else EXIT_OK


def _clean_up(the_plan: Plan | int | None, ray_started: bool, logger: logging.Logger) -> None:
    try:
        if the_plan is not None and not isinstance(the_plan, int):
            the_plan.close()
    except Exception as e:  # noqa: BLE001 - clean-up goes on
        logger.warning("clean-up: %s", e)
    if ray_started:
        import ray

        ray.shutdown()
