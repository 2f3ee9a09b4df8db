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
import sys
from pathlib import Path

from jobs.cli import EXIT_INVALID, EXIT_OK, config_or_none, execute, setup_logging
from jobs.config import describe, redact

log = logging.getLogger("jobs.embed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.embed", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML job config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set source.uri=s3://bucket/docs (repeatable)")
    p.add_argument("--summary", type=Path, help="write the run summary as JSON to this file")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    return p.parse_args(argv)


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
