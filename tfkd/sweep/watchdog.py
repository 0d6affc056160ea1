"""Stops what a driver started when the driver dies without stopping it (kill -9, out of memory).

    python -m tfkd.sweep.watchdog PID

follows the processes below PID (read from /proc once a second); once PID is gone it sends
SIGTERM, then SIGKILL, to those of them still running, and exits. tfkd starts one beside each
local Ray it starts: a killed driver's Ray agents (dashboard and runtime-env agents) would
otherwise run on. A process is identified by its pid and start time, so a reused pid is never
signalled. Linux only (elsewhere it exits at once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tfkd.sweep import processes

POLL_SECONDS = 1.0
GRACE_SECONDS = 5.0

Process = tuple[int, str]  # (pid, start time in clock ticks since boot)


def _identity(pid: int) -> Process | None:
    fields = processes.stat(pid)
    return (pid, fields[19]) if fields else None  # field 22 of stat: the start time


def _running(process: Process) -> bool:
    fields = processes.stat(process[0])
    return fields is not None and fields[19] == process[1] and fields[0] != "Z"


def below(pid: int) -> set[Process]:
    """Every process below `pid` now."""
    found = (_identity(child) for child in processes.descendants(pid))
    return {identity for identity in found if identity is not None}


def _signal_all(targets: set[Process], signum: int) -> None:
    for process in targets:
        if _running(process):
            try:
                os.kill(process[0], signum)
            except ProcessLookupError:
                pass


def watch(driver: Process) -> None:
    """Follow the driver's descendants while it lives; stop the ones left when it is gone."""
    seen: set[Process] = set()
    while _running(driver):
        seen |= below(driver[0])
        time.sleep(POLL_SECONDS)
    # what the survivors started since the last look (a worker Ray spawned in the last second)
    seen |= {child for process in list(seen) if _running(process) for child in below(process[0])}
    seen.discard(_identity(os.getpid()))
    _signal_all(seen, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while any(_running(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_all(seen, signal.SIGKILL)


def start_for(pid: int) -> subprocess.Popen | None:
    """Start a watchdog for `pid` in its own session (it must outlive a killed driver)."""
    if processes.stat(pid) is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "tfkd.sweep.watchdog", str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m tfkd.sweep.watchdog PID", file=sys.stderr)
        return 2
    driver = _identity(int(argv[0]))
    if driver is not None:
        watch(driver)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
