"""Run a command while busy loops compete for the CPU: the suite as a loaded CI machine runs it.

    .venv/bin/python tests/load.py -- .venv/bin/python -m pytest tests/reliability -q
    .venv/bin/python tests/load.py --procs 4 --nice 5 -- make test

Starts ``--procs`` (default: one per core, ``os.cpu_count()``) Python processes that spin at
niceness ``--nice`` (default 0: the same priority as the command), runs the command, stops the
loops when it ends (also on Ctrl-C or SIGTERM, which are passed on to the command) and exits with
the command's exit code (128 + N when a signal N ended it). A load process also stops on its own
within a fraction of a second if this script is killed outright. Not a test module (no ``test_``
prefix): pytest does not collect it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

# Spins until its parent (this script) is gone; checks about every 0.1 s.
SPIN = """
import os, sys
parent = int(sys.argv[1])
os.nice(int(sys.argv[2]))
while os.getppid() == parent:
    for _ in range(500_000):
        pass
"""


def start_load(procs: int, nice: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid()), str(nice)], stdin=subprocess.DEVNULL,
                             start_new_session=True)  # Ctrl-C in the terminal reaches the command, not the loops
            for _ in range(procs)]


def stop_load(load: list[subprocess.Popen[bytes]]) -> None:
    for p in load:
        if p.poll() is None:
            p.kill()
    for p in load:
        p.wait()


def in_foreground() -> bool:
    """Whether this process group is its terminal's foreground group (so a Ctrl-C reached the command too)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--procs N] [--nice N] -- command [args...]")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="busy processes (default: os.cpu_count() = %(default)s)")
    parser.add_argument("--nice", type=int, default=0, help="their niceness (default 0, as the command's)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    if args.procs < 0 or args.nice < 0:
        parser.error("--procs and --nice must be >= 0")

    load = start_load(args.procs, args.nice)
    print(f"load: {args.procs} busy process(es) at nice {args.nice} while running: {' '.join(command)}",
          file=sys.stderr, flush=True)
    began = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None

    def forward(sig: int, _frame: object) -> None:
        # Ctrl-C in a terminal reaches the command already (same foreground process group): not twice.
        if proc is not None and proc.poll() is None and not (sig == signal.SIGINT and in_foreground()):
            proc.send_signal(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc = subprocess.Popen(command)
        code = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if proc is not None and proc.poll() is None:  # this script failed: do not leave the command behind
            proc.kill()
            proc.wait()
        stop_load(load)
    code = 128 - code if code < 0 else code
    print(f"load: stopped {args.procs} busy process(es) after {time.monotonic() - began:.0f} s; "
          f"the command exited {code}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
