"""The job's own ``milvus-lite server`` for a local ``milvus.uri`` path.

milvus-lite lets one process own a data folder. So that the writers (Ray actors) and the driver
share one code path with a Milvus server, a run whose ``milvus.uri`` is a local ``.db`` path
starts ``milvus-lite server --data-dir <that path>`` on a free loopback port, everyone connects
to ``http://127.0.0.1:<port>``, and the server stops when the run ends. The writers are pinned to
the driver's node (loopback). The folder stays readable by embedded milvus-lite afterwards
(``jobs.search``).

A process that already runs an embedded milvus-lite on that folder (a notebook, a test that
queried it) shares that server instead: only one may hold the folder.

The server process dies with the job: it gets SIGTERM when its parent dies (Linux
``PR_SET_PDEATHSIG``), so not even a SIGKILL of the driver leaves it behind.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.milvus.connect import lite_path
from cluster.milvus.errors import MilvusConnectError
from cluster.settings import MilvusConfig

log = logging.getLogger(__name__)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _embedded_uri(path: Path) -> str | None:
    """The uri of the embedded milvus-lite server this process already runs on ``path``, if any.

    pymilvus keeps an embedded server (and its folder lock) until the process exits, even after
    ``client.close()``; a run started in such a process (a notebook, a test) shares that server.
    """
    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is None:
        return None
    held = getattr(manager.server_manager_instance, "_servers", {})  # no public lookup that does not start one
    return manager.server_manager_instance.start_and_get_uri(str(path)) if str(path) in held else None


class LiteServer:
    """A ``milvus-lite server`` on the data folder of a local ``milvus.uri``.

    Args:
        cfg: The ``milvus`` settings (``uri`` a local ``.db`` path).
        log_file: Where the server's output goes (default: discarded).
    """

    def __init__(self, cfg: MilvusConfig, log_file: Path | None = None) -> None:
        self.data_dir = lite_path(cfg.uri).resolve()
        self.cfg = cfg
        self.port = _free_port()
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.borrowed = False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def effective(self) -> MilvusConfig:
        """The ``milvus`` settings every client of this run uses (the server's uri)."""
        return dataclasses.replace(self.cfg, uri=self.uri)

    def start(self, timeout_s: float = 60.0) -> LiteServer:
        shared = _embedded_uri(self.data_dir)
        if shared is not None:
            self.port = int(shared.rsplit(":", 1)[1])
            self.borrowed = True
            log.info("milvus-lite for %s: sharing this process' embedded server at %s", self.data_dir, shared)
            return self
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe)] if exe.exists() else ([shutil.which("milvus-lite")] if shutil.which("milvus-lite")
                                               else [sys.executable, "-m", "milvus_lite"])
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([*cmd, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MilvusConnectError(f"milvus-lite server for {self.data_dir} exited with {self.proc.returncode}: "
                                         "another process may hold this folder (only one may open a milvus-lite "
                                         "folder); stop it, or point milvus.uri at a Milvus server")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                log.info("milvus-lite server for %s listening on %s", self.data_dir, self.uri)
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise MilvusConnectError(f"milvus-lite server for {self.data_dir} did not listen within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        log.info("milvus-lite server for %s stopped", self.data_dir)
