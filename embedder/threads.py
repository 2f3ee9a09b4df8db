"""Torch threads of a process that runs the forward pass on CPU.

Ray starts a worker with ``OMP_NUM_THREADS`` set to the CPUs the actor asked for (1 by
default), so torch in an embed actor would use one core of the node however many it has.
An actor whose forward pass runs on CPU is the node's main consumer: it takes every core its
process may use (``model.cpu_threads`` overrides), and one inter-op thread (the forward pass
has no independent ops to run side by side; extra pools only compete for the same cores).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_cpu_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested`` or every usable core; returns the count."""
    import torch

    before = torch.get_num_threads()
    threads = requested or usable_cores()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op work in the process
        pass
    log.info("CPU forward pass: %d torch threads (the process started with %d)", threads, before)
    return threads
