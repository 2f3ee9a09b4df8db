"""``python -m jobs.embed --config FILE [--set key=value ...] [--summary PATH]``

Embeds every document of ``source.uri`` into ``milvus.collection``. Runs unchanged under
``ray job submit``: it joins the running cluster (``RAY_ADDRESS``, or the job's own) and
starts a local Ray otherwise.

Exit codes: 0 clean; 3 finished, but some input was rejected (see the summary and the log);
2 could not start (invalid config or input, unreachable S3 or Milvus, another run holds the
target); 1 the run failed; 130 / 143 stopped by SIGINT / SIGTERM. After 1, 130 and 143 running
the same command again resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from jobs.cli import EXIT_INVALID, EXIT_OK, config_or_none, execute, setup_logging
from jobs.config import JobConfig, describe, redact

log = logging.getLogger("jobs.embed")
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIP_EXCLUDES = [".cache/", ".venv/", ".git/", "embed-state/", "*.db", "benchmarks/"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.embed", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML job config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set source.uri=s3://bucket/docs (repeatable)")
    p.add_argument("--summary", type=Path, help="write the run summary as JSON to this file")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    return p.parse_args(argv)


def in_ray_job() -> bool:
    """True under ``ray job submit`` (the job's runtime env ships the code)."""
    return bool(os.environ.get("RAY_JOB_ID")) or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def joins_cluster(cfg: JobConfig) -> bool:
    """True when the driver runs against a Ray cluster instead of a Ray it starts itself."""
    return bool(cfg.cluster.address or os.environ.get("RAY_ADDRESS") or in_ray_job())


def check_cluster_paths(cfg: JobConfig) -> str | None:
    """On a cluster, the manifest must be where every node and the next run can see it.

    Read tasks on any node write the shards' id files next to the manifest, and ``ray job submit``
    runs the driver in a per-job working directory that is gone afterwards: a relative
    ``checkpoint.uri`` is refused there; an absolute local path must be a filesystem shared by all nodes.
    """
    from cluster.source.filesystem import is_local

    if not joins_cluster(cfg):
        return None
    uri = cfg.checkpoint.uri
    if uri and is_local(uri) and not os.path.isabs(uri.split("://", 1)[-1]):
        return (f"checkpoint.uri {uri!r} is a relative path, but the driver joins a Ray cluster: it would be written "
                "under a per-job working directory (ray job submit) that vanishes, and read tasks on other nodes "
                "could not reach it. Use s3://bucket/prefix (or an absolute path on a filesystem every node shares)")
    if uri and is_local(uri):
        log.warning("checkpoint.uri %s is a local path: every node of the cluster must share this filesystem", uri)
    if cfg.errors.uri and is_local(cfg.errors.uri) and not os.path.isabs(cfg.errors.uri.split("://", 1)[-1]):
        log.warning("errors.uri %s is relative: under ray job submit the dead-letter files land in the job's "
                    "working directory, which does not outlive the job; prefer s3://", cfg.errors.uri)
    return None


def init_ray(cfg: JobConfig) -> bool:
    """Join a cluster when there is one (address, RAY_ADDRESS, or inside a Ray job), else start a local Ray.

    Returns:
        True when this process started (and so must shut down) a local Ray.
    """
    import ray

    if ray.is_initialized():
        return False
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
    if in_ray_job():  # the job's runtime env already ships the code
        ray.init()
        return False
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    if address:  # a driver joining a cluster from a checkout
        if cfg.cluster.ship_code:
            runtime_env = {"working_dir": str(REPO_ROOT), "excludes": SHIP_EXCLUDES, "env_vars": env}
        else:
            runtime_env = {"env_vars": {"PYTHONPATH": path, **env}}
        ray.init(address=address, runtime_env=runtime_env)
        return False
    # Local Ray: workers import this project from the same checkout. On a loaded small machine
    # the local node can miss Ray's start-up deadline; one more try after a pause is enough.
    for attempt in (1, 2):
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": path, **env}}, include_dashboard=False)
            return True
        except Exception as e:  # Ray raises a bare Exception for a start-up timeout
            if attempt == 2 or "timed out" not in str(e).lower():
                raise
            log.warning("the local Ray did not start in time (%s); trying once more", e)
            ray.shutdown()
            time.sleep(5)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.help_config:
        print("\n".join(describe()))
        return EXIT_OK
    setup_logging()
    cfg = config_or_none(args.config, args.overrides, log)
    if cfg is None:
        return EXIT_INVALID
    log.info("config %s", json.dumps(redact(cfg), default=str))
    return execute(cfg, log, args.summary)


if __name__ == "__main__":
    sys.exit(main())
