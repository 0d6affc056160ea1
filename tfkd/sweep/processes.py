"""The processes of this machine as Linux shows them in /proc (no psutil needed).

Read only, and only what tfkd needs: which processes exist, their parent and state, the program
each runs, and the processes below one of them. Where /proc cannot be read (not Linux) there are
no processes.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def pids(proc: Path = PROC) -> list[int]:
    """Every process visible in `proc`."""
    try:
        return [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def stat(pid: int, proc: Path = PROC) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: [state, ppid, ...]; None when gone.

    Index i here is field i + 3 of proc(5): the command name, in parentheses, may hold spaces, so
    the fields are split after its closing parenthesis.
    """
    try:
        return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def program_name(pid: int, proc: Path = PROC) -> str | None:
    """The file name of the program `pid` runs (its argv[0] without folders); None when gone."""
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return os.path.basename(cmdline.split(b"\0", 1)[0].decode(errors="replace"))


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    """Every process below `pid` now: its children, theirs, and so on."""
    children: dict[int, list[int]] = {}
    for child in pids(proc):
        if (fields := stat(child, proc)) is not None:
            children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
