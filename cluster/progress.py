"""Counting a run: per-shard state from the writers' records, the summary, and progress lines on a timer.

The driver's memory here grows with shards and languages, never with documents: records carry
counts (:mod:`cluster.records`). Progress lines come from a timer thread, so they appear every
``log_every_s`` even while the first batch is still being embedded: the read tasks report
documents read and chunks tokenized to a small :class:`ProgressCounter` actor, the writers'
records bring chunks embedded and rows written.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster.records import ShardCounts
from cluster.source import Shard

log = logging.getLogger(__name__)


class ProgressCounter:
    """Totals reported by the read tasks, per run (a Ray actor with ``num_cpus=0``, one per driver).

    One actor serves every run of a driver process (:func:`read_progress`): a driver that runs the job
    several times (a test session, a notebook) starts no worker process per run for it. Runs are kept
    apart by their run id and forgotten when they end; the actor ends with its driver.
    """

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, int]] = {}

    def add(self, run: str, **counts: int) -> None:
        mine = self.totals.setdefault(run, {})
        for key, value in counts.items():
            mine[key] = mine.get(key, 0) + int(value)

    def get(self, run: str) -> dict[str, int]:
        return dict(self.totals.get(run, {}))

    def forget(self, run: str) -> None:
        self.totals.pop(run, None)


#: The name of the driver's counter actor in its (per-driver) Ray namespace.
COUNTER_NAME = "embed-read-progress"
#: The handle the driver created it with: Ray ends a (non-detached) actor once that handle and its
#: copies are gone, even while it is named, so the driver keeps it between runs.
_kept_counter: Any = None


class ReadProgress:
    """What a read task reports to: one run's totals in the driver's :class:`ProgressCounter`."""

    def __init__(self, actor: Any, run: str) -> None:
        self.actor, self.run = actor, run

    def add(self, **counts: int) -> None:
        """Fire and forget: a lost report only makes a progress line lag."""
        self.actor.add.remote(self.run, **counts)

    def get(self, timeout_s: float) -> dict[str, int]:
        import ray

        return ray.get(self.actor.get.remote(self.run), timeout=timeout_s)

    def close(self) -> None:
        self.actor.forget.remote(self.run)


def read_progress(run: str) -> ReadProgress:
    """This run's totals in the driver's counter actor, started with the first run of this Ray session.

    The actor is named in the driver's own namespace, so another driver never shares it; a new Ray
    session (or an actor that died with its node) gets a new one.
    """
    import ray

    global _kept_counter
    actor = ray.remote(ProgressCounter).options(name=COUNTER_NAME, get_if_exists=True, num_cpus=0).remote()
    if _kept_counter is None or _kept_counter._actor_id != actor._actor_id:  # first run, new session, or it died
        _kept_counter = actor
    return ReadProgress(actor, run)


class RunTracker:
    """Per-shard counts, run totals and the summary."""

    def __init__(self, shards: list[Shard]) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        # Steady state: blocks written after the first one (start-up = until the first block was written).
        self.first_at: float | None = None
        self.first_tokens = 0
        self.last_at: float | None = None
        self.shards = {s.path: ShardCounts(size=s.size) for s in shards}
        self.bytes_total = sum(s.size for s in shards) or 1
        self.shards_skipped = self.docs_deleted = self.rejects = self.fp32_reruns = self.chunks_deleted = 0
        self.delete_failures = self.stale_deleted = 0
        self.deletes_held = 0  # delete_missing candidate files left pending (incomplete run, or over the guard)
        self.repaired_rows = 0  # rows written again: the winning versions of ids held by several shards
        self.cross_shard_duplicates: int | None = 0
        self.id_kind_mismatch: list[str] = []
        self.languages: dict[str, dict[str, int]] = {}
        self.reject_samples: list[dict[str, Any]] = []
        self.read: dict[str, int] = {}  # from the read tasks' counter (progress lines only)
        self.lock = threading.Lock()

    def add(self, rec: dict[str, Any]) -> list[str]:
        """Count a confirmed writer record; returns the shards it completed."""
        with self.lock:
            done = []
            for path, counts in rec["shards"].items():
                st = self.shards[path]
                was = st.done
                st.add(counts)
                if st.done and not was:
                    done.append(path)
            for lang, stats in rec["languages"].items():
                mine = self.languages.setdefault(lang, dict.fromkeys(stats, 0))
                for key, value in stats.items():
                    mine[key] = mine.get(key, 0) + value
            self.rejects += rec["rejects"]
            self.fp32_reruns += rec.get("fp32_reruns", 0)
            self.stale_deleted += rec.get("stale_deleted", 0)
            if len(self.reject_samples) < 20:
                self.reject_samples.extend(rec["reject_samples"][:20 - len(self.reject_samples)])
            tokens = sum(c.get("tokens", 0) for c in rec["shards"].values())
            at = rec.get("at")
            if at is not None and tokens:
                if self.first_at is None or at < self.first_at:
                    self.first_at, self.first_tokens = at, tokens
                self.last_at = max(self.last_at or at, at)
            return done

    def lose(self, records: list[dict[str, Any]]) -> None:
        """Records of a writer that died before confirming them: their shards cannot complete now."""
        with self.lock:
            for rec in records:
                for path in rec["shards"]:
                    self.shards[path].lost = True
        log.warning("a writer restarted before confirming its last blocks: %d shard(s) cannot be completed in "
                    "this run and stay unrecorded (the next run does them again)", len({p for r in records
                                                                                         for p in r["shards"]}))

    def total(self, key: str) -> int:
        return sum(getattr(s, key) for s in self.shards.values())

    def info_total(self, key: str) -> int:
        """A count the read tasks report per shard (on its end marker), summed."""
        return sum(int(s.info.get(key, 0)) for s in self.shards.values())

    @property
    def docs_read(self) -> int:
        return self.total("docs_seen")

    @property
    def docs_failed(self) -> int:
        return self.total("docs_failed")

    def shards_done(self) -> int:
        """Shards finished without a shard-level failure."""
        return sum(1 for s in self.shards.values() if s.ok)

    @property
    def shards_failed(self) -> int:
        return sum(1 for s in self.shards.values() if s.done and s.error is not None)

    @property
    def duplicate_ids(self) -> int:
        within = sum(int(s.info.get("duplicates", 0)) for s in self.shards.values())
        return within + (self.cross_shard_duplicates or 0)

    def progress_line(self, unconfirmed_rows: int = 0) -> str:
        """Documents read and tokenized, chunks embedded, rows written, shards done, rate and ETA."""
        with self.lock:
            elapsed = time.monotonic() - self.started
            done_bytes = sum(s.size for s in self.shards.values() if s.done)
            docs = max(self.read.get("docs_read", 0), self.docs_read)
            rate = docs / elapsed if elapsed > 0 else 0.0
            eta = "?"
            if 0 < done_bytes < self.bytes_total:
                eta = f"{elapsed * (self.bytes_total - done_bytes) / done_bytes:.0f}s"
            elif done_bytes >= self.bytes_total and self.shards:
                eta = "0s"
            return (f"progress: {docs} docs read, {self.read.get('chunks_tokenized', 0)} chunks tokenized, "
                    f"{self.total('chunks_ok')} chunks embedded, "
                    f"{self.total('rows_written') + unconfirmed_rows} rows written, "
                    f"{self.docs_failed} docs rejected, {self.shards_done()}/{len(self.shards)} shards, "
                    f"{rate:.1f} docs/s, {self.total('tokens') / elapsed if elapsed > 0 else 0:.0f} tokens/s, "
                    f"ETA {eta}")

    def language_summary(self) -> dict[str, dict[str, float]]:
        """Per language: counts, tokens per character (tokenizer cost), share of chunks at the length limit."""
        out = {}
        for lang, s in sorted(self.languages.items()):
            out[lang] = {**s, "tokens_per_char": round(s["tokens"] / s["chars"], 4) if s["chars"] else 0.0,
                         "chunks_at_limit_share": round(s["chunks_at_limit"] / s["chunks"], 4) if s["chunks"] else 0.0}
        return out

    def summary(self) -> dict[str, object]:
        """The run summary promised in the README."""
        elapsed = time.monotonic() - self.started
        startup = (self.first_at - self.started_wall) if self.first_at is not None else elapsed
        tokens = self.total("tokens")
        padded = self.total("padded_tokens")
        steady = (self.last_at - self.first_at) if self.first_at is not None and self.last_at is not None else 0.0
        return {
            "docs_read": self.docs_read + self.info_total("unchanged"),
            "docs_unchanged": self.info_total("unchanged"),  # skipped: their rows held this version already
            "tokens_skipped": self.info_total("tokens_skipped"),
            "chunks_embedded": self.total("chunks_ok"),
            "rows_written": self.total("rows_written"),
            "docs_failed": self.docs_failed,
            "chunks_failed": self.total("chunks_failed"),
            "shards": len(self.shards),
            "shards_done": self.shards_done(),
            "shards_failed": self.shards_failed,
            "shards_incomplete": sum(1 for s in self.shards.values() if not s.done or s.lost),
            "shards_skipped": self.shards_skipped,
            "docs_truncated": self.total("truncated"),
            "duplicate_ids": self.duplicate_ids,
            "docs_deleted": self.docs_deleted,
            "chunks_deleted": self.chunks_deleted,  # of documents gone from the source (delete_missing)
            "stale_chunks_deleted": self.stale_deleted,  # tails of documents that shrank
            "deletes_failed": self.delete_failures,
            "deletes_held": self.deletes_held,
            "repaired_rows": self.repaired_rows,
            "id_kind_mismatch": self.id_kind_mismatch[:20],
            "fp32_reruns": self.fp32_reruns,
            "tokens": tokens,
            "elapsed_s": round(elapsed, 3),
            "startup_s": round(startup, 3),
            "docs_per_s": round(self.docs_read / elapsed, 3) if elapsed > 0 else 0.0,
            "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else 0.0,
            # tokens of the blocks after the first, over the time from the first block written to the last
            "steady_tokens_per_s": round((tokens - self.first_tokens) / steady, 1) if steady > 0 else None,
            "padding_efficiency": round(tokens / padded, 4) if padded else 1.0,
            **driver_usage(),
            "languages": self.language_summary(),
        }


def driver_usage() -> dict[str, float]:
    """CPU seconds and peak memory of this (the driver's) process so far, for scale projections."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "driver_peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


class ProgressTimer:
    """Logs a progress line every ``every_s`` seconds from a daemon thread until stopped.

    Each line ends with ``(timer tick N)``, N counting this timer's wake-ups from 1: a line from the
    timer is told from the final one, and how many intervals had passed, without reading clocks.
    """

    def __init__(self, every_s: float, line: Callable[[], str]) -> None:
        self.every_s, self.line = every_s, line
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> ProgressTimer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.ticks += 1
            try:
                log.info("%s (timer tick %d)", self.line(), self.ticks)
            except Exception as e:  # noqa: BLE001 - a progress line must never stop the run
                log.debug("progress line failed: %s", e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
