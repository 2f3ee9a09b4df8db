"""``milvus.mode: bulk_import`` at scale: import groups of shards as they finish, resumably.

The shards of a run are cut, in listing order, into groups of ``milvus.import_group_shards``.
Writers append each block's rows to a parquet import file of its group (one open file per group
and writer, see :mod:`cluster.milvus.importfiles`). When every shard of a group has settled
(finished, failed, or lost with a writer), the driver:

1. asks every writer to close its files of the group, leaving out the rows of shards that
   failed or could not complete (they are redone by the next run);
2. checks that the files hold exactly the chunks each remaining shard embedded;
3. records the group in the manifest (``imports/<name>.json``: shards, files, jobs with their
   idempotency keys) *before* creating any job, then creates the import jobs (at most 1024
   files each) with an ``Idempotency-Key`` header, recording each job id;
4. polls the jobs; when all completed and each imported exactly its rows, records the group's
   shards as done, drops the group record and deletes the files.

A re-run first settles the groups an earlier run recorded (:func:`resume_imports`): a job with
an id is polled; a job without one is created again with the same key (a server that honours
``Idempotency-Key`` returns the first job), or found in the server's job list by its files
(servers that do not), so no file is ever imported twice. A failed import job leaves its
shards unrecorded (imports are atomic: nothing of it landed), and the next run redoes them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from cluster.milvus.errors import BulkImportError
from cluster.source import Shard

if TYPE_CHECKING:
    from cluster.driver import Plan
    from cluster.manifest import Manifest
    from cluster.progress import RunTracker
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")

MAX_FILES_PER_JOB = 1024  # Milvus' limit per import job


def import_client(cfg: JobConfig, milvus: Any) -> Any:
    from cluster.milvus.imports import ImportClient

    return ImportClient(cfg.milvus.import_uri or milvus.uri, token=milvus.token, db_name=milvus.db_name)


def _delete_files(cfg: JobConfig, uris: list[str]) -> None:
    from cluster.source.filesystem import filesystem

    for uri in uris:
        fs, path = filesystem(uri, cfg.milvus.bulk_storage_options)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001 - a leftover import file is garbage, not an error of the run
            log.warning("could not delete import file %s: %s", uri, e)


def _wait_jobs(client: Any, group: dict[str, Any], cfg: JobConfig, save: Any) -> bool:
    """Create what is missing and wait for every job of a recorded group; True when all completed."""
    for job in group["jobs"]:
        if not job.get("job_id"):
            job["job_id"] = client.find_job(cfg.milvus.collection, [[f] for f in job["files"]]) or client.create(
                cfg.milvus.collection, [[f] for f in job["files"]], idempotency_key=job["key"])
            save(group)
    for job in group["jobs"]:
        try:
            done = client.wait(job["job_id"], poll_s=cfg.milvus.import_poll_s, timeout_s=cfg.milvus.import_timeout_s)
        except BulkImportError as e:
            log.error("import job %s of group %s failed: %s; its shards are not recorded and will be embedded "
                      "again", job["job_id"], group["name"], e)
            return False
        _check_rows(job, done)
    return True


def _check_rows(job: dict[str, Any], done: dict[str, Any]) -> None:
    imported = done.get("imported_rows")
    if imported is not None and int(imported) != int(job["rows"]):
        raise BulkImportError(f"import job {job['job_id']} imported {imported} rows, its files hold {job['rows']}: "
                              "check the collection before going on (imports insert)")


def resume_imports(cfg: JobConfig, manifest: Manifest, the_plan: Plan) -> int:
    """Finish the import groups an earlier run recorded; returns how many completed (their shards recorded)."""
    groups = manifest.import_groups()
    if not groups:
        return 0
    client = import_client(cfg, the_plan.milvus)
    records = manifest.records()
    completed = 0
    for group in groups:
        log.info("resuming import group %s (%d shard(s), %d job(s))", group["name"], len(group["shards"]),
                 len(group["jobs"]))
        if _wait_jobs(client, group, cfg, manifest.put_import_group):
            for s in group["shards"]:
                shard = Shard(path=s["path"], format=s["format"], size=s["size"], version=s["version"])
                manifest.mark_done(shard, s["counts"], s.get("ids"), records.get(s["path"]))
            completed += 1
        manifest.drop_import_group(group["name"])
        _delete_files(cfg, group["uris"])
    return completed


class ImportGroups:
    """The driver's bookkeeping of import groups during a run."""

    def __init__(self, cfg: JobConfig, the_plan: Plan, tracker: RunTracker, record: Any) -> None:
        if the_plan.manifest is None:
            raise ValueError("milvus.mode bulk_import needs checkpoint.uri: import groups are recorded there")
        self.cfg, self.plan, self.tracker, self.record = cfg, the_plan, tracker, record
        self.manifest: Manifest = the_plan.manifest
        size = cfg.milvus.import_group_shards
        self.group_of = {s.path: i // size for i, s in enumerate(the_plan.shards)}
        self.tag_of = {s.path: i for i, s in enumerate(the_plan.shards)}
        self.members: dict[int, list[str]] = {}
        for path, g in self.group_of.items():
            self.members.setdefault(g, []).append(path)
        self.settled_paths: set[str] = set()
        self.open = set(self.members)
        self.in_flight: list[dict[str, Any]] = []
        self.client = import_client(cfg, the_plan.milvus)
        self.root = f"{cfg.milvus.bulk_uri.rstrip('/')}/{self.manifest.key}/{the_plan.run_id}"
        self.pool: Any = None
        self.incarnations: list[str | None] | None = None
        self.last_poll = 0.0

    def writer_settings(self, settings: Any) -> Any:
        return dataclasses.replace(settings, bulk=True, bulk_root=self.root,
                                   bulk_options=dict(self.cfg.milvus.bulk_storage_options),
                                   bulk_file_bytes=self.cfg.milvus.import_file_mb << 20,
                                   groups=dict(self.group_of), tags=dict(self.tag_of))

    def settled(self, paths: list[str]) -> None:
        """Shards whose records are all confirmed: close the groups they complete."""
        self.settled_paths.update(paths)
        for g in sorted(self.open):
            if all(p in self.settled_paths for p in self.members[g]):
                self._close(g)

    def _restarted(self) -> bool:
        now = [s.incarnation for s in self.pool.slots]
        if self.incarnations is None:
            self.incarnations = now
        return now != self.incarnations

    def _close(self, g: int, lost: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.open.discard(g)
        shards = self.members[g]
        keep = [p for p in shards if p not in lost and self.tracker.shards[p].ok]
        drop = [self.tag_of[p] for p in shards if p not in keep]
        restarted = self._restarted()
        results = self.pool.call_all("close_group", g, drop)
        files = [f for r in results if r for f in r["files"]]
        uris = [f["uri"] for f in files]
        per_tag: dict[int, int] = {}
        for f in files:
            for tag, n in f["tag_rows"].items():
                per_tag[int(tag)] = per_tag.get(int(tag), 0) + int(n)
        wrong = [p for p in keep if per_tag.get(self.tag_of[p], 0) != self.tracker.shards[p].chunks_ok]
        if restarted or None in results or wrong:
            why = (f"shard {wrong[0]} has {per_tag.get(self.tag_of[wrong[0]], 0)} rows in the import files but "
                   f"{self.tracker.shards[wrong[0]].chunks_ok} chunks were embedded" if wrong
                   else "a writer restarted while the group was open")
            log.error("import group %d is not imported: %s; its %d shard(s) are redone by the next run", g, why,
                      len(shards))
            for p in shards:
                self.tracker.shards[p].lost = True
            _delete_files(self.cfg, uris)
            return
        if not files:
            for p in keep:
                self.record(p)
            return
        name = f"{self.plan.run_id}-g{g:05d}"
        jobs = [{"key": f"{self.manifest.key}-{name}-{k}", "files": [f["path"] for f in part], "job_id": None,
                 "rows": sum(f["rows"] for f in part)}
                for k, part in enumerate(_chunks(files, MAX_FILES_PER_JOB))]
        by_path = {s.path: s for s in self.plan.shards}
        group = {"name": name, "uris": uris, "jobs": jobs, "shards": [
            {"path": p, "format": by_path[p].format, "size": by_path[p].size, "version": by_path[p].version,
             "ids": self.tracker.shards[p].info.get("ids"), "counts": self.tracker.shards[p].manifest_counts()}
            for p in keep]}
        self.manifest.put_import_group(group)  # before any job exists: a crash from here on resumes it
        for job in jobs:
            job["job_id"] = self.client.create(self.cfg.milvus.collection, [[f] for f in job["files"]],
                                               idempotency_key=job["key"])
            self.manifest.put_import_group(group)
        log.info("import group %d: %d file(s), %d rows of %d shard(s) submitted as job(s) %s", g, len(files),
                 sum(j["rows"] for j in jobs), len(keep), ", ".join(j["job_id"] for j in jobs))
        self.in_flight.append(group)

    def poll(self, every_s: float | None = None) -> None:
        """Check the jobs in flight; a completed group's shards are recorded, its files deleted."""
        every_s = self.cfg.milvus.import_poll_s if every_s is None else every_s
        if not self.in_flight or time.monotonic() - self.last_poll < every_s:
            return
        self.last_poll = time.monotonic()
        for group in list(self.in_flight):
            states = []
            for job in group["jobs"]:
                if job.get("done"):
                    states.append("completed")
                    continue
                d = self.client.describe(job["job_id"])
                if d["state"] == "failed":
                    raise BulkImportError(f"import job {job['job_id']} of group {group['name']} failed: "
                                          f"{d.get('reason') or 'no reason given'}; its shards are not recorded: "
                                          "run again to redo them")
                if d["state"] == "completed":
                    _check_rows(job, d)
                    job["done"] = True
                states.append(d["state"])
            if all(s == "completed" for s in states):
                self._finish_group(group)

    def _finish_group(self, group: dict[str, Any]) -> None:
        for s in group["shards"]:
            self.record(s["path"])
        self.manifest.drop_import_group(group["name"])
        _delete_files(self.cfg, group["uris"])
        self.in_flight.remove(group)
        log.info("import group %s completed: %d shard(s) recorded", group["name"], len(group["shards"]))

    def finish(self, lost: set[str], tick: Any = None) -> None:
        """After the stream: close every open group (unfinished shards left out), wait for all imports."""
        for g in sorted(self.open):
            self._close(g, lost)
        deadline = time.monotonic() + self.cfg.milvus.import_timeout_s
        while self.in_flight:
            if time.monotonic() > deadline:
                raise BulkImportError(f"{len(self.in_flight)} import group(s) did not finish in "
                                      f"{self.cfg.milvus.import_timeout_s:.0f} s; they are recorded: run again to "
                                      "wait for them")
            self.poll()
            if self.in_flight:
                time.sleep(min(1.0, self.cfg.milvus.import_poll_s))


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
