"""One run per target at a time: a lease object with owner, heartbeat and expiry.

The lease lives at ``<checkpoint.uri>/leases/<target>.json``, where ``<target>`` hashes the
Milvus uri in one spelling (:func:`normalized_target`: ``localhost`` and ``127.0.0.1`` are one
server), database and collection, so every run writing that collection through this checkpoint
storage meets it. Runs with *different* checkpoint folders do not meet here: that is what the
collection's holder property is for (:mod:`cluster.milvus.holder`, a best-effort guard). A run:

1. creates the lease (only if absent); if it exists and is alive, stops with :class:`LeaseHeld`
   naming the holder (host, pid, run, mode, since when);
2. takes over a stale lease with a warning: its heartbeat is older than its ``ttl_s``, or its
   holder ran on this host and that process is gone;
3. renews the heartbeat every ``ttl_s / 4`` seconds from a thread; when a renewal finds that
   another run took the lease (this run was presumed dead), :attr:`Lease.lost` says so and the
   run stops;
4. deletes the lease when it ends (also after a failure or a signal).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from cluster.manifest.store import Store

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another run holds the lease of this target."""


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "ip6-localhost"}
_DEFAULT_PORT = {"http": 19530, "https": 443, "tcp": 19530, "grpc": 19530}


def normalized_target(milvus_uri: str) -> str:
    """The Milvus target as one spelling: ``http://127.0.0.1:19530/`` and ``http://localhost:19530`` are the
    same server, and so are two spellings of one milvus-lite folder (credentials removed).

    Loopback names and addresses become ``loopback``, a missing port the scheme's default, host
    names lower case; a local path becomes its absolute, resolved form.
    """
    from urllib.parse import urlsplit

    if "://" not in milvus_uri:
        return "file:" + os.path.realpath(os.path.expanduser(milvus_uri))
    parts = urlsplit(milvus_uri)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK or host.startswith("127."):
        host = "loopback"
    port = parts.port or _DEFAULT_PORT.get(scheme, 0)
    scheme = "https" if scheme == "https" else "milvus"  # http, tcp and grpc reach the same port
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def target_key(milvus_uri: str, db_name: str | None, collection: str) -> str:
    """The lease name of a target collection: one name however its uri is spelled (no credentials in it)."""
    text = f"{normalized_target(milvus_uri)}|{db_name or 'default'}|{collection}"
    return f"{collection}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), to tell a live holder from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Lease:
    """The lease of one target.

    Args:
        store: Where leases live (``<checkpoint.uri>/leases``).
        name: :func:`target_key` of the target.
        info: What the holder tells others: run id, mode, collection.
        ttl_s: A lease whose heartbeat is older than this is stale.
        clock: Wall clock (tests pass a fake).
    """

    def __init__(self, store: Store, name: str, info: dict[str, Any], *, ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.rel, self.ttl_s, self.clock = store, f"{name}.json", ttl_s, clock
        self.info = dict(info)
        self.nonce = uuid.uuid4().hex
        self.version: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_beat: Callable[[], None] | None = None  # also called after each renewal (the collection's holder)

    @property
    def uri(self) -> str:
        return self.store.uri_of(self.rel)

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        now = self.clock()
        return {**self.info, "host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid),
                "nonce": self.nonce, "acquired_at": self.info.get("acquired_at", now), "heartbeat_at": now,
                "ttl_s": self.ttl_s}

    def acquire(self) -> None:
        """Take the lease, or raise :class:`LeaseHeld` naming the live holder."""
        for _ in range(5):
            record = self._record()
            self.info["acquired_at"] = record["acquired_at"]
            if self.store.create_json(self.rel, record):
                self._reread()
                return
            current, version = self.store.get_json_versioned(self.rel)
            if current is None:
                continue  # released between the two calls
            why = self.stale(current)
            if why is None:
                raise LeaseHeld(f"another run holds {self.uri}: {describe(current)}. Wait for it to end, or stop it; "
                                f"a lease whose holder died is taken over after {current.get('ttl_s', self.ttl_s):.0f} "
                                "s without heartbeat")
            if self.store.swap_json(self.rel, record, version, check=lambda cur, seen=current: cur == seen):
                log.warning("took over the stale lease %s (%s): %s", self.uri, why, describe(current))
                self._reread()
                return
        raise LeaseHeld(f"could not take {self.uri}: other runs keep changing it")

    def _reread(self) -> None:
        current, self.version = self.store.get_json_versioned(self.rel)
        if current is None or current.get("nonce") != self.nonce:
            raise LeaseHeld(f"lost {self.uri} to {describe(current or {})} right after taking it")

    def stale(self, record: dict[str, Any]) -> str | None:
        """Why a lease record is stale, or None when its holder may be alive."""
        age = self.clock() - float(record.get("heartbeat_at") or 0)
        if age > float(record.get("ttl_s") or self.ttl_s):
            return f"no heartbeat for {age:.0f} s"
        if record.get("host") == socket.gethostname() and record.get("pid"):
            start = process_start(int(record["pid"]))
            if start is None or (record.get("pid_start") and start != record["pid_start"]):
                return f"its process {record['pid']} on this host is gone"
        return None

    def renew(self) -> bool:
        """Refresh the heartbeat; False (and :attr:`lost` set) when another run took the lease."""
        record = self._record()
        ok = self.store.swap_json(self.rel, record, self.version, check=lambda cur: cur.get("nonce") == self.nonce)
        if not ok:
            current = self.store.get_json(self.rel) or {}
            self.lost = f"the lease {self.uri} was taken over by {describe(current)} (this run was presumed dead)"
            return False
        if not self.store.local:
            _, self.version = self.store.get_json_versioned(self.rel)
        return True

    def verify(self) -> bool:
        """Read the lease object now: False (and :attr:`lost` set) when another run holds it.

        The fence before a manifest commit or a deletion: the heartbeat notices a takeover only
        every ``ttl_s / 4``; this costs one read, done once per checkpoint, not per shard.
        """
        if self.lost:
            return False
        current = self.store.get_json(self.rel)
        if current is None or current.get("nonce") != self.nonce:
            self.lost = (f"the lease {self.uri} is now held by {describe(current) if current else 'nobody'} "
                         "(this run was presumed dead)")
            return False
        return True

    def start_heartbeat(self) -> None:
        """Renew from a daemon thread until :meth:`release`."""
        def beat() -> None:
            while not self._stop.wait(self.ttl_s / 4):
                try:
                    if not self.renew():
                        log.error("%s", self.lost)
                        return
                except Exception as e:  # noqa: BLE001 - a storage hiccup: try again next beat
                    log.warning("could not renew the lease %s: %s", self.uri, e)
                    continue
                if self.on_beat is not None:
                    try:
                        self.on_beat()
                    except Exception as e:  # noqa: BLE001 - best effort (the collection's holder property)
                        log.warning("could not refresh the collection's holder property: %s", e)

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self.store.get_json(self.rel)
        except Exception as e:  # noqa: BLE001 - best effort: a leftover lease goes stale by itself
            log.warning("could not read the lease %s on release: %s", self.uri, e)
            return
        if current is not None and current.get("nonce") == self.nonce:
            self.store.delete(self.rel)


def describe(record: dict[str, Any]) -> str:
    """The holder of a lease record, for messages."""
    since = record.get("acquired_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else "?"
    return (f"run {record.get('run_id', '?')} ({record.get('mode', '?')} mode) on host {record.get('host', '?')} "
            f"pid {record.get('pid', '?')}, since {when}, last heartbeat "
            f"{time.time() - float(record.get('heartbeat_at') or 0):.0f} s ago")
