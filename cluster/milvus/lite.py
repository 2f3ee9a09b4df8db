"""The job's own ``milvus-lite server`` for a local ``milvus.uri`` path.

milvus-lite lets one process own a data folder. So that the writers (Ray actors) and the driver
share one code path with a Milvus server, a run whose ``milvus.uri`` is a local ``.db`` path
starts a milvus-lite server (:mod:`cluster.milvus.lite_serve`) on a loopback port the kernel
chooses (bound without ``SO_REUSEPORT``: no other server can share it), everyone connects to
``http://127.0.0.1:<port>``, and the server stops when the run ends. The writers are pinned to the
driver's node (loopback). The folder stays readable by embedded milvus-lite afterwards
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
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.milvus.connect import lite_path
from cluster.milvus.errors import MilvusConnectError
from cluster.settings import MilvusConfig

log = logging.getLogger(__name__)
_REPO = Path(__file__).resolve().parents[2]  # so that `python -m cluster...` finds this package


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(data_dir: Path, log_file: Path | None = None, *, port: int = 0, timeout_s: float = 60.0,
          max_workers: int = 10, die_with_parent: bool = True) -> tuple[subprocess.Popen[bytes], int]:
    """Start :mod:`cluster.milvus.lite_serve` on ``data_dir``; returns the process and the port it bound.

    ``port`` 0 lets the kernel choose (never a port another server holds); the server binds without
    ``SO_REUSEPORT``, so a given port that is taken fails instead of being shared. With
    ``die_with_parent`` the server gets SIGTERM when the *thread* that called this ends (that is
    how Linux' parent-death signal works): call it from the main thread, or pass False.
    """
    with tempfile.TemporaryDirectory(prefix="lite-port-") as tmp:
        port_file = Path(tmp) / "port"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))}
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen([sys.executable, "-m", "cluster.milvus.lite_serve", "--data-dir", str(data_dir),
                                     "--port-file", str(port_file), "--port", str(port),
                                     "--max-workers", str(max_workers)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_die_with_parent if die_with_parent else None)
        finally:
            if log_file:
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_file.exists():
                return proc, int(port_file.read_text())
            if proc.poll() is not None:
                where = f" (its output: {log_file})" if log_file else ""
                raise MilvusConnectError(f"milvus-lite server for {data_dir} exited with {proc.returncode}{where}: "
                                         "another process may hold this folder (only one may open a milvus-lite "
                                         "folder); stop it, or point milvus.uri at a Milvus server")
            time.sleep(0.05)
        proc.kill()
        proc.wait(10)
    raise MilvusConnectError(f"milvus-lite server for {data_dir} did not listen within {timeout_s:.0f} s")


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
        self.port = 0  # chosen by the server when it starts
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
        self.proc, self.port = spawn(self.data_dir, self.log_file, timeout_s=timeout_s)
        log.info("milvus-lite server for %s listening on %s", self.data_dir, self.uri)
        return self

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
