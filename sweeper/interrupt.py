"""Stopping a command from outside: Ctrl-C (SIGINT) and SIGTERM (cron, systemd, `kill`, a batch
scheduler) both unwind the command as a KeyboardInterrupt, which `sweeper.cli` reports in one line.

Why by hand: `ray.init` installs a SIGTERM handler of its own (`sys.exit`), and Ray's C++ core
worker a failure-signal handler that prints a native stack trace on SIGTERM, so a terminated sweep
printed Ray's stack instead of one line. `sweeper.runner.connect` calls `on_sigterm_interrupt()`
again after `ray.init`, taking SIGTERM back. Trials stopped this way write no row: they are simply
missing, and the next run runs them (a row saying a scheduler stopped them would be false).

Why Ctrl-C by hand too: Python's own SIGINT handler raises KeyboardInterrupt wherever the main
thread is, and code we do not own can swallow it. A sweep signalled just after it said "running N
trials" (while Tune sets up) ran all its trials to the end and exited 0, once in CI and once in 16
tries here under load. So both signals also set a flag (`terminated`, `interrupted`), and the
sweep's Tune callback (`sweeper.orchestration.stopping`) raises again at every step of Tune's loop
until the interrupt gets out; `run_study` and `run_search` ask once more after Tune returns.
"""
from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C (so every `finally` runs: locks released, Ray shut down)."""


# Whether SIGTERM arrived: code between the handler and the CLI (Tune's) may re-raise the
# interrupt as a plain KeyboardInterrupt, so the CLI asks this rather than the exception's type.
terminated = False
# Whether SIGINT (Ctrl-C) arrived.
interrupted = False


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


def _raise_interrupted(signum, frame):
    global interrupted
    interrupted = True
    raise KeyboardInterrupt()


def raise_if_stopped() -> None:
    """Raise the interrupt again when a stop signal arrived (its first one may have been swallowed)."""
    if terminated:
        raise Terminated()
    if interrupted:
        raise KeyboardInterrupt()


def clear() -> None:
    """Forget earlier signals (a command run again in the same process starts afresh)."""
    global terminated, interrupted
    terminated = interrupted = False


def on_stop_signals():
    """SIGTERM and SIGINT both raise in the main thread and set the flags; returns the handlers it
    replaced, for `restore`. A SIGINT that the process was started ignoring (a background job of a
    shell script, `nohup`-style launchers) stays ignored: the user chose that."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _raise_interrupted)
    return on_sigterm_interrupt(), previous_int


def restore(previous) -> None:
    """Put back the handlers `on_stop_signals` replaced."""
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    sigterm, sigint = previous
    restore_sigterm(sigterm)
    if sigint is not None:
        signal.signal(signal.SIGINT, sigint)


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
