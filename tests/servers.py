"""Servers the tests start themselves: a milvus-lite server subprocess on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cluster.milvus.lite import spawn


class LiteServer:
    """A milvus-lite server subprocess on loopback that can be stopped and started again on the same port.

    The first start lets the kernel choose the port; a restart binds the same one without
    ``SO_REUSEPORT`` (:mod:`cluster.milvus.lite_serve`), so it fails rather than share it with
    another server that took it meanwhile. The server outlives the thread that started it (an
    outage test restarts it from one) and is killed by :meth:`stop`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, 0
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
