"""Stopping a command from outside: Ctrl-C (SIGINT) and SIGTERM (cron, systemd, `kill`, a batch
scheduler) both unwind the command as a KeyboardInterrupt, which `sweeper.cli` reports in one line.

Why by hand: `ray.init` installs a SIGTERM handler of its own (`sys.exit`), and Ray's C++ core
worker a failure-signal handler that prints a native stack trace on SIGTERM, so a terminated sweep
printed Ray's stack instead of one line. `sweeper.runner.connect` calls `on_sigterm_interrupt()`
again after `ray.init`, taking SIGTERM back. Trials stopped this way write no row: they are simply
missing, and the next run runs them (a row saying a scheduler stopped them would be false).
"""
from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C (so every `finally` runs: locks released, Ray shut down)."""


# Whether SIGTERM arrived: code between the handler and the CLI (Tune's) may re-raise the
# interrupt as a plain KeyboardInterrupt, so the CLI asks this rather than the exception's type.
terminated = False


def _raise_terminated(signum, frame):
    global terminated
    if terminated:
        # Already unwinding. SIGTERM often comes twice (a batch scheduler signals every process of
        # the job, then the job script's cleanup signals the sweep again); a second Terminated
        # raised inside the first one's cleanup cut `ray.shutdown()` short, and Tune's exit hook
        # then waited 60 s on the Ray head's GCS, which had died of the same signal.
        return
    terminated = True
    raise Terminated()


def on_sigterm_interrupt():
    """Make SIGTERM raise Terminated in the main thread (elsewhere signals cannot be handled);
    returns the handler it replaced, for `restore_sigterm` (None when it replaced none)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def restore_sigterm(previous) -> None:
    """Put back the handler `on_sigterm_interrupt` replaced (a command run inside another program,
    such as a test or a notebook, leaves its SIGTERM handling as it was)."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
