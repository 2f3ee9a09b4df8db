"""Servers the tests start themselves: a milvus-lite server subprocess on loopback."""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path

from cluster.milvus.lite import spawn


def port_outside_ephemeral_range(attempts: int = 50) -> int:
    """A free loopback port below the kernel's ephemeral range, where no ``bind(port 0)`` lands.

    A server restarted on its port must find it free: while it is down, a port the kernel once
    chose may be given to any process binding port 0 (the other xdist worker's Ray workers and
    milvus-lite servers bind dozens), and the writer under test would then reconnect to that one.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(attempts):
        port = random.randrange(max(1025, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port below {low}")


class LiteServer:
    """A milvus-lite server subprocess on loopback that can be stopped and started again on the same port.

    Its port is below the kernel's ephemeral range (:func:`port_outside_ephemeral_range`), so that
    no other process is given it while the server is down; a restart binds the same one without
    ``SO_REUSEPORT`` (:mod:`cluster.milvus.lite_serve`), so it fails rather than share it with
    another server that took it meanwhile. The server outlives the thread that started it (an
    outage test restarts it from one) and is killed by :meth:`stop`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, port_outside_ephemeral_range()
        self.log = data_dir.with_name(data_dir.name + ".log")  # the server's output, every start
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        assert self.port, "start the server first"
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.proc, self.port = spawn(self.data_dir, self.log, port=self.port, timeout_s=timeout, max_workers=4,
                                     die_with_parent=False)  # restarted from a test's thread

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
