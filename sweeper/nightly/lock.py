"""One nightly per store at a time: the lock `<store>/reports/nightly.lock`, which names its holder
(pid, host, start time) so that a second nightly can say who holds it, and exit with status 3."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from sweeper.errors import SweeperError
from sweeper.report.layout import REPORTS, now_utc, read_bytes
from sweeper.store import Store

LOCK = "nightly.lock"
_GUARD_STALE_SECONDS = 60.0  # a take-over guard this old was left by a process that died mid-way
# On an object store the lock is written, then read back now and again this much later: of two
# nightlies that both found no lock, the later write wins and the earlier writer sees it in time.
REMOTE_SETTLE_SECONDS = 2.0


class LockHeld(SweeperError):
    """Another nightly holds the store's lock (exit status 3)."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclasses.dataclass
class Holder:
    pid: int
    host: str
    started_at: str
    token: str
    proc_start: str | None = None
    command: str = ""

    @classmethod
    def me(cls) -> "Holder":
        return cls(os.getpid(), socket.gethostname(), now_utc().isoformat(timespec="seconds"),
                   uuid.uuid4().hex, _proc_start(os.getpid()), " ".join(sys.argv))

    @classmethod
    def parse(cls, data: bytes | None) -> "Holder | None":
        try:
            d = json.loads((data or b"").decode())
            return cls(int(d["pid"]), str(d["host"]), str(d["started_at"]), str(d["token"]),
                       d.get("proc_start"), str(d.get("command", "")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def dumps(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=1) + "\n").encode()

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}"

    def stale(self) -> bool:
        """Gone for sure: it ran on this host and that process no longer exists (or the pid now
        belongs to a process started later). A holder on another host is never judged stale."""
        if self.host != socket.gethostname():
            return False
        if not _pid_alive(self.pid):
            return True
        return bool(self.proc_start) and _proc_start(self.pid) not in (None, self.proc_start)


class NightlyLock:
    """`<store>/reports/nightly.lock`, created with O_CREAT|O_EXCL on a local store (atomic: of
    two nightlies exactly one creates it). On an object store, where pyarrow offers no atomic
    create, it is checked, written, and read back twice, REMOTE_SETTLE_SECONDS apart: two nightlies
    that both found no lock both write it, the later write wins, and the earlier writer sees the
    later one's lock on its second read and exits. Only a nightly that stalled for longer than the
    settle time between its look and its write could slip through: enough for a daily cron job.

    The file holds the holder's pid, host and start time. A lock whose holder ran on this host and
    is gone (killed -9, a reboot) is stale: the next nightly takes it over, saying so."""

    def __init__(self, store: Store, say: Callable[[str], None] = print):
        self.store, self.say = store, say
        self.path = store.path(REPORTS, LOCK)
        self.shown = store.url(REPORTS, LOCK)  # the path as the user names it (s3://...)
        self.me: Holder | None = None

    def __enter__(self) -> "NightlyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _held(self, holder: Holder | None) -> LockHeld:
        who = holder.describe() if holder else "holder unknown (the file is empty or unreadable)"
        return LockHeld(f"another nightly holds the lock {self.shown} ({who}); exiting. "
                        f"If no nightly runs, delete that file.", "nightly")

    def acquire(self) -> None:
        me = Holder.me()
        if not self.store.local:
            return self._acquire_remote(me)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    if not self._old(self.path):  # being written right now: look again
                        time.sleep(0.05)
                        continue
                    raise self._held(None)
                if not holder.stale():
                    raise self._held(holder)
                self._take_over(holder)
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(me.dumps())
                f.flush()
                os.fsync(f.fileno())
            self.me = me
            return
        raise self._held(self._read_holder())

    def _read_holder(self) -> Holder | None:
        return Holder.parse(read_bytes(self.store, self.path))

    @staticmethod
    def _old(path: str, seconds: float = 2.0) -> bool:
        try:
            return time.time() - os.stat(path).st_mtime > seconds
        except FileNotFoundError:
            return False

    def _take_over(self, stale: Holder) -> None:
        """Remove a stale lock, under a guard file so that of two nightlies seeing the same stale
        lock only one removes it (the other would otherwise remove the winner's new lock)."""
        guard = self.path + ".takeover"
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if self._old(guard, _GUARD_STALE_SECONDS):
                os.unlink(guard)
                return
            raise self._held(stale) from None
        os.close(fd)
        try:
            current = self._read_holder()
            if current is not None and current.token == stale.token:
                os.unlink(self.path)
                self.say(f"sweeper nightly: took over the stale lock {self.path} "
                         f"({stale.describe()}: no such process on this host)")
        finally:
            os.unlink(guard)

    def _acquire_remote(self, me: Holder) -> None:
        if self.store.exists(self.path):
            holder = self._read_holder()
            if holder is None or not holder.stale():
                raise self._held(holder)
            try:
                self.store.fs.delete_file(self.path)
            except FileNotFoundError:  # another nightly took it over first: the read-backs decide
                pass
            self.say(f"sweeper nightly: took over the stale lock {self.shown} "
                     f"({holder.describe()}: no such process on this host)")
        self.store.write_bytes(self.path, me.dumps())
        for pause in (0.0, REMOTE_SETTLE_SECONDS):
            time.sleep(pause)
            holder = self._read_holder()
            if holder is None or holder.token != me.token:  # another nightly wrote after us: it holds
                raise self._held(holder)
        self.me = me

    def release(self) -> None:
        if self.me is None:
            return
        holder = self._read_holder()
        if holder is not None and holder.token == self.me.token:  # never remove another's lock
            try:
                self.store.fs.delete_file(self.path)
            except (FileNotFoundError, OSError):
                pass
        self.me = None
