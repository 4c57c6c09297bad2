"""Is a process still there? One answer for every lock and wait that names a pid (the nightly lock,
a compaction's pending file, `sweeper slurm`'s wait on `ray start`).

A pid alone can mislead: a dead process that is not reaped yet (a zombie) still answers kill(0),
and a pid is reused after its process ends. So a zombie counts as dead, and where the holder wrote
down its start time (field 22 of /proc/PID/stat, in clock ticks since boot) a different start
time means a different process. Without /proc (not Linux) only kill(0) is asked.
"""
from __future__ import annotations

import os


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces and parentheses)."""
    try:
        text = open(f"/proc/{pid}/stat").read()
        return text[text.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def start_time(pid: int | None = None) -> str | None:
    """When process `pid` (default: this one) started, as /proc says it; None where it cannot."""
    fields = _stat(os.getpid() if pid is None else pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` runs (someone else's counts); with `started` (start_time() of the
    process meant), whether it is still that process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    fields = _stat(pid)
    if fields is None:
        return True
    if fields[0] == "Z":  # exited, not yet reaped by its parent
        return False
    return started is None or len(fields) <= 19 or fields[19] == started
