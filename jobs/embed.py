"""``python -m jobs.embed --config FILE [--set key=value ...] [--summary PATH]``

Embeds every document of ``source.uri`` into ``milvus.collection``. Runs unchanged under
``ray job submit``: it joins the running cluster (``RAY_ADDRESS``, or the job's own) and
starts a local Ray otherwise.

Exit codes: 0 clean; 3 finished, but some input was rejected (see the summary and the log);
2 invalid config or input that stops the run before it starts; 1 the run failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from jobs.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_REJECTED, config_or_none, plan_or_exit_code, setup_logging
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


def init_ray(cfg: JobConfig) -> None:
    """Join a cluster when there is one (address, RAY_ADDRESS, or inside a Ray job), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
    if os.environ.get("RAY_JOB_ID") or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # under `ray job submit`: the job's runtime env already ships the code
        ray.init()
        return
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    if address:  # a driver joining a cluster from a checkout
        if cfg.cluster.ship_code:
            runtime_env = {"working_dir": str(REPO_ROOT), "excludes": SHIP_EXCLUDES, "env_vars": env}
        else:
            runtime_env = {"env_vars": {"PYTHONPATH": path, **env}}
        ray.init(address=address, runtime_env=runtime_env)
        return
    # Local Ray: workers import this project from the same checkout. On a loaded small machine
    # the local node can miss Ray's start-up deadline; one more try after a pause is enough.
    for attempt in (1, 2):
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": path, **env}}, include_dashboard=False)
            return
        except Exception as e:  # Ray raises a bare Exception for a start-up timeout
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            log.warning("the local Ray did not start in time (%s); trying once more", e)
            ray.shutdown()
            time.sleep(5)


def write_summary(path: Path | None, summary: dict[str, object] | None, *, failed: bool = False) -> None:
    """The run summary as JSON (also after a failure: what was done until then, with ``failed: true``)."""
    if path is None or summary is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**summary, "failed": True} if failed else summary  # on success: exactly the logged summary
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


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
    the_plan = plan_or_exit_code(cfg, log)
    if isinstance(the_plan, int):
        return the_plan

    from cluster import driver

    init_ray(cfg)
    try:
        summary = driver.run(cfg, the_plan)
    except driver.RejectedInput as e:
        log.error("stopped: %s (finished shards are recorded; fix the input and run again to resume)", e)
        write_summary(args.summary, getattr(e, "summary", None), failed=True)
        return EXIT_FAILED
    except Exception as e:
        log.exception("the run failed")
        write_summary(args.summary, getattr(e, "summary", None), failed=True)
        return EXIT_FAILED
    write_summary(args.summary, summary)
    rejected = summary["docs_failed"] or summary["chunks_failed"] or summary["shards_failed"]
    return EXIT_REJECTED if rejected else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
