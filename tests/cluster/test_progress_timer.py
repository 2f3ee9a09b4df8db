"""The progress timer marks its lines with its tick count: tests tell a timer line by that, not by a clock."""

from __future__ import annotations

import logging
import time

import pytest

from cluster.progress import ProgressTimer


def test_each_wake_up_logs_one_line_marked_with_its_tick(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def line() -> str:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the counter actor is gone")  # a failed line is skipped, the timer goes on
        return "progress: 0 docs read"

    with caplog.at_level(logging.INFO, logger="cluster.progress"):
        timer = ProgressTimer(0.01, line).start()
        deadline = time.monotonic() + 60  # only against a hang: the lines come every 10 ms
        while len(caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        timer.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines[:3] == ["progress: 0 docs read (timer tick 1)", "progress: 0 docs read (timer tick 3)",
                         "progress: 0 docs read (timer tick 4)"]
    assert timer.ticks == len(calls) and not timer._thread.is_alive()
