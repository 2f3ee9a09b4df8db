"""Where the job's Ray comes from: a cluster it joins (address, RAY_ADDRESS, ``ray job submit``) or
a local Ray it starts; and what a driver joining a cluster must not do (a local manifest path)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIP_EXCLUDES = [".cache/", ".venv/", ".git/", "embed-state/", "*.db", "benchmarks/"]


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
    from embedder.storage import is_local

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
