"""``milvus.mode: bulk_import`` at scale: import groups of shards as they finish, resumably.

The shards of a run are cut, in listing order, into groups of ``milvus.import_group_shards``.
Writers append each block's rows to a parquet import file of its group (one open file per group
and writer, see :mod:`cluster.milvus.importfiles`). When every shard of a group has settled
(finished, failed, or lost with a writer), the driver:

1. asks every writer to close its files of the group, leaving out the rows of shards that
   failed or could not complete (they are redone by the next run); a writer that restarted
   while the group was open (its incarnation differs from the one noted when the group's first
   rows were confirmed) lost its part of the files, so the whole group is redone;
2. checks that the files hold exactly the chunks each remaining shard embedded;
3. records the group in the manifest (``imports/<name>.json``: shards, files, jobs with their
   idempotency keys) *before* creating any job, then creates the import jobs (at most 1024
   files each) with an ``Idempotency-Key`` header, recording each job id; at most
   ``milvus.import_max_running_jobs`` jobs of the run run at once, further groups wait;
4. polls the jobs. A group is settled only by what the server says of *all* its jobs:

   * all completed (each imported exactly its rows): its shards are recorded, the group record
     dropped and its files deleted;
   * all failed: nothing of it was imported (a job is atomic), so the group record and files go
     and its shards stay unrecorded: the run ends incomplete (exit 1), the next run redoes them;
   * some completed, some failed: :class:`ImportPartlyDone` (neither recording nor redoing is
     right; the group stays recorded).

   Anything else (the API unreachable or answering errors, a job past ``milvus.import_timeout_s``)
   says nothing of the job: the run stops (exit 1) and the group stays recorded as it is.

A re-run first settles the groups an earlier run recorded (:func:`resume_imports`), by the same
rules: a job with an id is polled; a job without one is looked for in the server's job list by
its files (servers before 2.6.24 ignore ``Idempotency-Key``), else created again with the same
key (a server that honours it returns the first job), so no file is ever imported twice.

What the manifest holds when the driver dies, and what the next run does:

================================  ===========================================  ==========================
dies                              durable                                      the next run
================================  ===========================================  ==========================
before the group is recorded      files of the group (garbage)                 embeds its shards again
after the record, before create   the record, jobs without id                  finds the job or creates it
after create                      the record with job ids                      polls the jobs
after the job completed           the record; rows in Milvus                   records the shards
after the shards are recorded     shard records (the group record may linger)  drops the group record
================================  ===========================================  ==========================
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.milvus.errors import BulkImportError, ImportPartlyDone, ImportTimeout
from cluster.source import Shard

if TYPE_CHECKING:
    from cluster.manifest import Manifest
    from cluster.plan import Plan
    from cluster.progress import RunTracker
    from jobs.config import JobConfig

log = logging.getLogger("jobs.embed")

MAX_FILES_PER_JOB = 1024  # Milvus' limit per import job
SETTLED = ("completed", "failed")


def import_client(cfg: JobConfig, milvus: Any) -> Any:
    from cluster.milvus.imports import ImportClient

    return ImportClient(cfg.milvus.import_uri or milvus.uri, token=milvus.token, db_name=milvus.db_name)


def _delete_files(cfg: JobConfig, uris: list[str]) -> None:
    from embedder.storage import filesystem

    for uri in uris:
        fs, path = filesystem(uri, cfg.milvus.bulk_storage_options)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001 - a leftover import file is garbage, not an error of the run
            log.warning("could not delete import file %s: %s", uri, e)


def _check_rows(job: dict[str, Any], done: dict[str, Any]) -> None:
    imported = done.get("imported_rows")
    if imported is not None and int(imported) != int(job["rows"]):
        raise BulkImportError(f"import job {job['job_id']} imported {imported} rows, its files hold {job['rows']}: "
                              "check the collection before going on (imports insert)")


class ImportJobs:
    """Recorded import groups whose jobs are not all settled: creates their jobs under the cap, polls them,
    and settles a group once the server described every one of its jobs as completed or failed.

    Args:
        cfg: The job's config (collection, cap, timeout).
        client: An :class:`~cluster.milvus.imports.ImportClient`.
        manifest: Where the groups are recorded (each new job id is saved at once).
        on_completed: Called with a group whose jobs all completed, each with exactly its rows.
        on_failed: Called with a group whose jobs all failed, and the server's reasons.
        clock: Monotonic clock of the timeouts (tests pass a fake).
    """

    def __init__(self, cfg: JobConfig, client: Any, manifest: Manifest, *,
                 on_completed: Callable[[dict[str, Any]], None],
                 on_failed: Callable[[dict[str, Any], list[str]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.client, self.manifest = cfg, client, manifest
        self.on_completed, self.on_failed, self.clock = on_completed, on_failed, clock
        self.cap = cfg.milvus.import_max_running_jobs
        self.groups: list[dict[str, Any]] = []  # recorded and not settled, oldest first
        self.state: dict[str, str] = {}  # job id -> last state described (pending, importing, completed, failed)
        self.reason: dict[str, str] = {}  # job id -> why it failed
        self.since: dict[str, float] = {}  # job id -> when this run started waiting for it
        self.resumed: set[str] = set()  # groups an earlier run recorded: their jobs may exist without an id

    def add(self, group: dict[str, Any], *, resumed: bool = False) -> None:
        """Take a recorded group (its record saved in the manifest before this)."""
        self.groups.append(group)
        if resumed:
            self.resumed.add(group["name"])
        for job in group["jobs"]:
            if job.get("job_id"):
                self.since.setdefault(job["job_id"], self.clock())

    def running(self) -> int:
        """Jobs created and not known to be settled (a job not described yet counts as running)."""
        return sum(1 for g in self.groups for j in g["jobs"]
                   if j.get("job_id") and self.state.get(j["job_id"]) not in SETTLED)

    def submit(self) -> None:
        """Create the jobs of the recorded groups, oldest first, while fewer than the cap run.

        Raises:
            ImportApiError: A create failed (whether the job exists is unknown: the next run looks for it).
        """
        try:
            self._submit()
        except BulkImportError as e:
            self._kept(e)
            raise

    def _submit(self) -> None:
        collection = self.cfg.milvus.collection
        for group in self.groups:
            for job in group["jobs"]:
                if job.get("job_id"):
                    continue
                if self.running() >= self.cap:
                    return
                files = [[f] for f in job["files"]]
                job_id = None
                if group["name"] in self.resumed:  # created before a crash that lost its id?
                    job_id = self.client.find_job(collection, files)
                job["job_id"] = job_id or self.client.create(collection, files, idempotency_key=job["key"])
                self.since[job["job_id"]] = self.clock()
                self.manifest.put_import_group(group)
                log.info("import group %s: job %s holds %d file(s), %d rows", group["name"], job["job_id"],
                         len(job["files"]), job["rows"])

    def poll(self) -> None:
        """Describe the unsettled jobs, settle the groups whose jobs all settled, create what now fits.

        Raises:
            ImportApiError: The API cannot be asked (the groups stay recorded as they are).
            ImportTimeout: A job ran past ``milvus.import_timeout_s`` (it may still finish).
            ImportPartlyDone: A group's jobs partly completed, partly failed.
        """
        try:
            for group in list(self.groups):
                for job in group["jobs"]:
                    self._describe(group, job)
                self._settle(group)
        except BulkImportError as e:
            self._kept(e)
            raise
        self.submit()

    def _kept(self, e: BulkImportError) -> None:
        if self.groups:
            log.error("import group(s) %s stay recorded in %s/imports as they are, for the next run to settle: %s",
                      ", ".join(g["name"] for g in self.groups[:5]) + (" ..." if len(self.groups) > 5 else ""),
                      self.manifest.uri, e)

    def _describe(self, group: dict[str, Any], job: dict[str, Any]) -> None:
        job_id = job.get("job_id")
        if not job_id or self.state.get(job_id) in SETTLED:
            return
        d = self.client.describe(job_id)
        if d["state"] == "completed":
            _check_rows(job, d)
        elif d["state"] == "failed":
            self.reason[job_id] = d.get("reason") or "no reason given"
        elif self.clock() - self.since[job_id] > self.cfg.milvus.import_timeout_s:
            raise ImportTimeout(
                f"import job {job_id} of group {group['name']} did not finish in {self.cfg.milvus.import_timeout_s:.0f}"
                f" s (milvus.import_timeout_s; state {d.get('raw_state') or d['state']}, {d.get('progress', 0)}%); "
                "it may still be running on the server: run again to wait for it")
        self.state[job_id] = d["state"]

    def _settle(self, group: dict[str, Any]) -> None:
        ids = [j.get("job_id") for j in group["jobs"]]
        if not all(i and self.state.get(i) in SETTLED for i in ids):
            return
        failed = [i for i in ids if self.state[i] == "failed"]
        if failed and len(failed) < len(ids):
            done = [i for i in ids if i not in failed]
            rows = sum(int(j["rows"]) for j in group["jobs"] if j["job_id"] in done)
            raise ImportPartlyDone(
                f"import group {group['name']} is partly imported: job(s) {', '.join(done)} completed ({rows} rows), "
                f"job(s) {', '.join(failed)} failed ({self.reason[failed[0]]}); its shards can be neither recorded "
                "(rows are missing) nor embedded again (rows would be there twice). Import the failed job's files "
                f"again under a new key, or build a new collection (jobs.reindex); the group stays recorded in "
                f"{self.manifest.uri}/imports/{group['name']}.json")
        self.groups.remove(group)
        if failed:
            self.on_failed(group, [self.reason[i] for i in failed])
        else:
            self.on_completed(group)


def resume_imports(cfg: JobConfig, manifest: Manifest, the_plan: Plan, *, client: Any = None,
                   sleep: Callable[[float], None] = time.sleep) -> int:
    """Settle the import groups an earlier run recorded; returns how many completed (their shards recorded).

    A group whose jobs the server describes as failed is dropped with its files (its shards are
    embedded again); any other trouble raises and leaves every group still unsettled recorded.

    Raises:
        ImportApiError, ImportTimeout, ImportPartlyDone: See :meth:`ImportJobs.poll` (exit 1: resumable).
    """
    groups = manifest.import_groups()
    if not groups:
        return 0
    client = client or import_client(cfg, the_plan.milvus)
    completed = 0

    def done(group: dict[str, Any]) -> None:
        nonlocal completed
        manifest.mark_done([(Shard(path=s["path"], format=s["format"], size=s["size"], version=s["version"]),
                             s["counts"], s.get("ids")) for s in group["shards"]])
        manifest.drop_import_group(group["name"])
        _delete_files(cfg, group["uris"])
        completed += 1
        log.info("import group %s completed: %d shard(s) recorded", group["name"], len(group["shards"]))

    def failed(group: dict[str, Any], reasons: list[str]) -> None:
        log.error("import group %s failed on the server (%s); nothing of it was imported: its %d shard(s) are "
                  "embedded again", group["name"], reasons[0], len(group["shards"]))
        manifest.drop_import_group(group["name"])
        _delete_files(cfg, group["uris"])

    jobs = ImportJobs(cfg, client, manifest, on_completed=done, on_failed=failed)
    for group in groups:
        log.info("resuming import group %s (%d shard(s), %d job(s))", group["name"], len(group["shards"]),
                 len(group["jobs"]))
        jobs.add(group, resumed=True)
    while True:
        jobs.poll()
        if not jobs.groups:
            return completed
        sleep(cfg.milvus.import_poll_s)


def refuse_reimport(the_plan: Plan, manifest: Manifest) -> None:
    """A full bulk_import run after a finished one, into the collection holding its rows: refuse, and say why.

    Call it before the new generation starts (the manifest unchanged). An empty collection is no
    reason to refuse.

    Raises:
        ValueError: The collection holds rows (exit 2: nothing was done).
    """
    name = the_plan.spec.name
    rows = int(the_plan.client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
    if not rows:
        return
    recorded = sum(int(r.get("chunks") or 0) for r in manifest.records().values() if manifest.done(r))
    at = manifest.state.get("finished_at")
    when = time.strftime(" at %Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else ""
    raise ValueError(
        f"the previous full bulk_import run of this job finished{when}, and collection {name!r} already holds its "
        f"rows ({rows} rows; the run recorded {recorded} chunks). milvus.mode bulk_import inserts, so running it "
        "again would load every row a second time. To import again, build a new collection (jobs.reindex, or "
        "another milvus.collection); to add only shards that are new since, run with mode: incremental; to "
        "rewrite the rows in place, use milvus.mode upsert")


class ImportGroups:
    """The driver's bookkeeping of import groups during a run."""

    def __init__(self, cfg: JobConfig, the_plan: Plan, tracker: RunTracker, record: Any, *,
                 client: Any = None) -> None:
        if the_plan.manifest is None:
            raise ValueError("milvus.mode bulk_import needs checkpoint.uri: import groups are recorded there")
        self.cfg, self.plan, self.tracker, self.record = cfg, the_plan, tracker, record
        self.manifest: Manifest = the_plan.manifest
        size = cfg.milvus.import_group_shards
        self.group_of = {s.path: i // size for i, s in enumerate(the_plan.shards)}
        self.tag_of = {s.path: i for i, s in enumerate(the_plan.shards)}
        self.by_path = {s.path: s for s in the_plan.shards}  # once: a group looks up only its own shards
        self.members: dict[int, list[str]] = {}
        for path, g in self.group_of.items():
            self.members.setdefault(g, []).append(path)
        self.settled_paths: set[str] = set()
        self.open = set(self.members)
        self.opened: dict[int, list[str | None]] = {}  # group -> writers' incarnations when its first rows came
        self.client = client or import_client(cfg, the_plan.milvus)
        self.jobs = ImportJobs(cfg, self.client, self.manifest, on_completed=self._completed,
                               on_failed=self._failed)
        self.root = f"{cfg.milvus.bulk_uri.rstrip('/')}/{self.manifest.key}/{the_plan.run_id}"
        self.pool: Any = None
        self.last_poll = 0.0

    @property
    def in_flight(self) -> list[dict[str, Any]]:
        """Groups recorded and not settled (their jobs created, running, or waiting for a slot)."""
        return self.jobs.groups

    def writer_settings(self, settings: Any) -> Any:
        return dataclasses.replace(settings, bulk=True, bulk_root=self.root,
                                   bulk_options=dict(self.cfg.milvus.bulk_storage_options),
                                   bulk_file_bytes=self.cfg.milvus.import_file_mb << 20,
                                   groups=dict(self.group_of), tags=dict(self.tag_of))

    def settled(self, paths: list[str]) -> None:
        """After each checkpoint: note the groups that received their first rows; close the ones ``paths`` complete."""
        self._note_opened()
        self.settled_paths.update(paths)
        for g in sorted(self.open):
            if all(p in self.settled_paths for p in self.members[g]):
                self._close(g)

    def _incarnations(self) -> list[str | None]:
        return [s.incarnation for s in self.pool.slots]

    def _note_opened(self) -> None:
        """The writers' incarnations when a group's first rows are confirmed (a record is confirmed only by the
        incarnation that wrote it, so a writer holding rows of the group is noted as it was then)."""
        if self.pool is None:
            return
        for g in self.open:
            if g not in self.opened and any(self.tracker.shards[p].docs_seen or self.tracker.shards[p].rows_written
                                            for p in self.members[g]):
                self.opened[g] = self._incarnations()

    def _close(self, g: int, lost: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.open.discard(g)
        shards = self.members[g]
        keep = [p for p in shards if p not in lost and self.tracker.shards[p].ok]
        drop = [self.tag_of[p] for p in shards if p not in keep]
        opened = self.opened.pop(g, None) or self._incarnations()
        results = self.pool.call_all("close_group", g, drop)
        files = [f for r in results if r for f in r["files"]]
        uris = [f["uri"] for f in files]
        per_tag: dict[int, int] = {}
        for f in files:
            for tag, n in f["tag_rows"].items():
                per_tag[int(tag)] = per_tag.get(int(tag), 0) + int(n)
        wrong = [p for p in keep if per_tag.get(self.tag_of[p], 0) != self.tracker.shards[p].chunks_ok]
        dead = [i for i, r in enumerate(results) if r is None]
        restarted = [r["writer"] for r in results
                     if r is not None and opened[r["writer"]] not in (None, r["incarnation"])]
        if wrong or dead or restarted:
            why = (f"shard {wrong[0]} has {per_tag.get(self.tag_of[wrong[0]], 0)} rows in the import files but "
                   f"{self.tracker.shards[wrong[0]].chunks_ok} chunks were embedded" if wrong
                   else f"writer {dead[0]} died while closing its files" if dead
                   else f"writer {restarted[0]} restarted while the group was open (its files of the group went "
                        "with it)")
            log.error("import group %d is not imported: %s; its %d shard(s) are redone by the next run", g, why,
                      len(shards))
            for p in shards:
                self.tracker.shards[p].lost = True
            _delete_files(self.cfg, uris)
            return
        if not files:
            self.record(keep)
            return
        name = f"{self.plan.run_id}-g{g:05d}"
        jobs = [{"key": f"{self.manifest.key}-{name}-{k}", "files": [f["path"] for f in part], "job_id": None,
                 "rows": sum(f["rows"] for f in part)}
                for k, part in enumerate(_chunks(files, MAX_FILES_PER_JOB))]
        by_path = self.by_path
        group = {"name": name, "uris": uris, "jobs": jobs, "shards": [
            {"path": p, "format": by_path[p].format, "size": by_path[p].size, "version": by_path[p].version,
             "ids": self.tracker.shards[p].info.get("ids"), "counts": self.tracker.shards[p].manifest_counts()}
            for p in keep]}
        self.manifest.put_import_group(group)  # before any job exists: a crash from here on resumes it
        log.info("import group %d: %d file(s), %d rows of %d shard(s) recorded, %d job(s) to create", g, len(files),
                 sum(j["rows"] for j in jobs), len(keep), len(jobs))
        self.jobs.add(group)
        self.jobs.submit()  # as many jobs as the cap allows now; the others when running ones settle

    def poll(self, every_s: float | None = None) -> None:
        """Check the jobs in flight (at most every ``milvus.import_poll_s``): settle groups, create waiting jobs."""
        every_s = self.cfg.milvus.import_poll_s if every_s is None else every_s
        if not self.jobs.groups or time.monotonic() - self.last_poll < every_s:
            return
        self.last_poll = time.monotonic()
        self.jobs.poll()

    def _completed(self, group: dict[str, Any]) -> None:
        self.record([s["path"] for s in group["shards"]])
        self.manifest.drop_import_group(group["name"])
        _delete_files(self.cfg, group["uris"])
        log.info("import group %s completed: %d shard(s) recorded", group["name"], len(group["shards"]))

    def _failed(self, group: dict[str, Any], reasons: list[str]) -> None:
        log.error("import group %s failed on the server (%s); nothing of it was imported: its %d shard(s) are not "
                  "recorded, the next run embeds them again", group["name"], reasons[0], len(group["shards"]))
        for s in group["shards"]:
            self.tracker.shards[s["path"]].lost = True  # the run ends incomplete (exit 1)
        self.manifest.drop_import_group(group["name"])
        _delete_files(self.cfg, group["uris"])

    def finish(self, lost: set[str], tick: Any = None) -> None:
        """After the stream: close every open group (unfinished shards left out), wait for all imports.

        Each job waits at most ``milvus.import_timeout_s`` from its creation (:class:`ImportTimeout`).
        """
        for g in sorted(self.open):
            self._close(g, lost)
        while self.jobs.groups:
            self.poll()
            if self.jobs.groups:
                if tick is not None:
                    tick()
                time.sleep(min(1.0, self.cfg.milvus.import_poll_s))


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
