"""One nightly per store at a time: the lock `<store>/reports/nightly.lock`.

The lock file names its holder (pid, host, start time), so that a second nightly can say who holds
it, and exit with status 3. A lock whose holder ran on this host and is gone (killed -9, a reboot)
is stale: the next nightly takes it over, saying so. A holder on another host is never judged stale
(its pid means nothing here).

On a local store, mutual exclusion is `filelock`'s: an flock on `reports/nightly.flock`, which the
kernel releases when its process dies, however it dies. That file stays, empty; `nightly.lock`,
written under the flock, only says who holds it, and goes on release.

On an object store, where pyarrow offers no atomic create and no flock, the lock is checked,
written, and read back twice, REMOTE_SETTLE_SECONDS apart: two nightlies that both found no lock
both write it, the later write wins, and the earlier writer sees the later one's lock on its second
read and exits. Only a nightly that stalled for longer than the settle time between its look and
its write could slip through: enough for a daily cron job.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
import uuid
from typing import Callable

from sweeper import procs
from sweeper.errors import SweeperError
from sweeper.report.layout import REPORTS, now_utc, read_bytes
from sweeper.store import Store

LOCK = "nightly.lock"
FLOCK = "nightly.flock"
# On an object store the lock is written, then read back now and again this much later: of two
# nightlies that both found no lock, the later write wins and the earlier writer sees it in time.
REMOTE_SETTLE_SECONDS = 2.0
# A nightly that has the flock writes its holder file right after: a second one that finds the
# flock taken waits this long for that file, to name the holder.
HOLDER_WAIT_SECONDS = 2.0


class LockHeld(SweeperError):
    """Another nightly holds the store's lock (exit status 3)."""


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
                   uuid.uuid4().hex, procs.start_time(), " ".join(sys.argv))

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
        return not procs.alive(self.pid, self.proc_start or None)


class NightlyLock:
    """`<store>/reports/nightly.lock`, held from `acquire` (or `with`) to `release`; LockHeld when
    another nightly holds it."""

    def __init__(self, store: Store, say: Callable[[str], None] = print):
        self.store, self.say = store, say
        self.path = store.path(REPORTS, LOCK)
        self.shown = store.url(REPORTS, LOCK)  # the path as the user names it (s3://...)
        self.me: Holder | None = None
        self._flock = None  # filelock.FileLock while a local store's lock is held

    def __enter__(self) -> "NightlyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _held(self, holder: Holder | None) -> LockHeld:
        who = holder.describe() if holder else "holder unknown (the file is empty or unreadable)"
        return LockHeld(f"another nightly holds the lock {self.shown} ({who}); exiting. "
                        f"If no nightly runs, delete that file.", "nightly")

    def _read_holder(self) -> Holder | None:
        return Holder.parse(read_bytes(self.store, self.path))

    def _took_over(self, stale: Holder) -> None:
        self.say(f"sweeper nightly: took over the stale lock {self.shown} "
                 f"({stale.describe()}: no such process on this host)")

    def acquire(self) -> None:
        me = Holder.me()
        if self.store.local:
            self._acquire_local(me)
        else:
            self._acquire_remote(me)
        self.me = me

    def _acquire_local(self, me: Holder) -> None:
        from filelock import FileLock, Timeout

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        flock = FileLock(self.store.path(REPORTS, FLOCK), timeout=0)
        try:
            flock.acquire()
        except Timeout:
            raise self._held(self._holder_of_flock()) from None
        try:
            # Under the flock no other nightly of this code writes here. A holder file left is a
            # dead nightly's (stale: taken over), or one that takes no flock (an older version of
            # this code, a holder on another host sharing the folder): that one holds the lock.
            if os.path.lexists(self.path):
                holder = self._read_holder()
                if holder is None or not holder.stale():
                    raise self._held(holder)
                self._took_over(holder)
            self.store.write_bytes(self.path, me.dumps())  # aside, then renamed: read whole or not at all
        except BaseException:
            flock.release()
            raise
        self._flock = flock

    def _holder_of_flock(self) -> Holder | None:
        """Who holds the flock, from the file it writes right after taking it."""
        deadline = time.monotonic() + HOLDER_WAIT_SECONDS
        while (holder := self._read_holder()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return holder

    def _acquire_remote(self, me: Holder) -> None:
        if self.store.exists(self.path):
            holder = self._read_holder()
            if holder is None or not holder.stale():
                raise self._held(holder)
            try:
                self.store.fs.delete_file(self.path)
            except FileNotFoundError:  # another nightly took it over first: the read-backs decide
                pass
            self._took_over(holder)
        self.store.write_bytes(self.path, me.dumps())
        for pause in (0.0, REMOTE_SETTLE_SECONDS):
            time.sleep(pause)
            holder = self._read_holder()
            if holder is None or holder.token != me.token:  # another nightly wrote after us: it holds
                raise self._held(holder)

    def release(self) -> None:
        if self.me is None:
            return
        holder = self._read_holder()
        if holder is not None and holder.token == self.me.token:  # never remove another's lock
            try:
                self.store.fs.delete_file(self.path)
            except (FileNotFoundError, OSError):
                pass
        if self._flock is not None:  # after the holder file went: the next nightly finds none
            self._flock.release()
            self._flock = None
        self.me = None
