"""What a sweep tells its user: the sweep's state (done / running / pending / failed, the running
trials' epochs, an ETA), said as one line per finished trial or drawn live (live.py), and the
summary it returns."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from sweeper.orchestration.trainable import record_lost_trial


@dataclass
class RunSummary:
    """What one `run_study` (or search) did, for the command's last lines and exit status."""

    study: str
    planned: int
    skipped: int  # already done in the store
    reused: int = 0  # taken from another study of the store that trained them the same way (sweeper.reuse)
    ran: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> error (this run)
    missing: int = 0  # neither done nor failed after the run (lost to faults)
    seconds: float = 0.0
    best: tuple[float, str] | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing


def _discard(line: str) -> None:
    """What a restored copy of the progress callback says: nothing (the driver that ran it is gone)."""


@dataclass
class Running:
    """A trial the sweep has started and not finished: what the live view shows of it."""

    label: str
    started: float  # time.monotonic()
    epochs: int = 0  # 0: the trial's kind has no epochs
    epoch: int = 0
    value: float | None = None  # its last reported metric (test_acc)


@dataclass
class SweepState:
    """Where a sweep stands, kept by the progress callback in the driver: counts, the running
    trials, the best value so far, and what finished trials took (for the ETA)."""

    total: int  # trials this run plans (a search: its samples)
    skipped: int  # done before this run
    metric: str
    mode: str
    started: float = field(default_factory=time.monotonic)
    running: dict[str, Running] = field(default_factory=dict)  # Tune's trial id -> trial
    retrying: dict[str, Running] = field(default_factory=dict)  # lost, waiting to run again
    finished: int = 0
    failed: int = 0
    seconds: list[float] = field(default_factory=list)  # durations of the trials that finished done
    most_running: int = 0  # the sweep's parallelism, as seen
    best: tuple[float, str] | None = None

    @property
    def done(self) -> int:
        return self.finished - self.failed

    @property
    def pending(self) -> int:
        return max(0, self.total - self.finished - len(self.running))

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the last trial ends, from the mean duration of the trials finished so far
        and the parallelism seen: the running trials' remaining share plus the pending trials,
        spread over that many slots. None until a trial has finished."""
        if not self.seconds:
            return None
        now = time.monotonic() if now is None else now
        mean = sum(self.seconds) / len(self.seconds)
        left = self.pending * mean + sum(max(0.0, mean - (now - r.started)) for r in self.running.values())
        return left / max(1, self.most_running)

    def start(self, key: str, label: str, epochs: int) -> None:
        if key in self.retrying:  # a retried trial starts again: keep its first start
            self.running[key] = self.retrying.pop(key)
        elif key not in self.running:
            self.running[key] = Running(label, time.monotonic(), epochs)
        self.most_running = max(self.most_running, len(self.running))

    def retry(self, key: str) -> None:
        """A trial lost (its worker or node gone) and queued to run again: pending until it starts,
        not counted as running meanwhile."""
        trial = self.running.pop(key, None)
        if trial is not None:
            self.retrying[key] = trial

    def result(self, key: str, result: dict) -> None:
        trial = self.running.get(key)
        if trial is None:
            return
        if isinstance(result.get("epoch"), (int, float)):
            trial.epoch = int(result["epoch"])
        if isinstance(result.get(self.metric), (int, float)):
            trial.value = float(result[self.metric])

    def finish(self, key: str, ok: bool, label: str, value=None) -> None:
        trial = self.running.pop(key, None) or self.retrying.pop(key, None)
        self.finished += 1
        if not ok:
            self.failed += 1
            return
        if trial is not None:
            self.seconds.append(time.monotonic() - trial.started)
        lower = self.mode == "min"
        if isinstance(value, float) and (self.best is None or (value < self.best[0] if lower else value > self.best[0])):
            self.best = (value, label)

    def line(self, last: str) -> str:
        """The line-per-event mode's line (the format of sweeper before the live view)."""
        best = f" · best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        return (f"[{self.finished + self.skipped}/{self.total + self.skipped}] {self.done} done, "
                f"{len(self.running)} running, {self.pending} pending, {self.failed} failed{best}  <- {last}")


def progress_callback(total: int, skipped: int, say: Callable[[str], None], metric: str, mode: str, view=None):
    """A Tune callback keeping the sweep's `SweepState` and saying one line per finished trial;
    `skipped` trials were done before. `view` (sweeper.orchestration.live.LiveView) draws the state
    live; it and `say` stay in the driver (a pickled copy has neither)."""
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished trial (counts, the best value so far); the live view's state."""

        def __init__(self):
            self.state = SweepState(total, skipped, metric, mode)
            if view is not None:
                view.watch(self.state)

        def __reduce__(self):
            # Tune pickles its callbacks into the experiment state; `say` (print, a logger) and the
            # view (a terminal) are the driver's alone and need not be picklable, so a restored copy
            # starts afresh.
            return progress_callback, (total, skipped, _discard, metric, mode)

        def on_trial_start(self, iteration, trials, trial, **info):
            spec = trial.config["point"]["spec"] if "point" in trial.config else trial.config.get("base", {})
            self.state.start(trial.trial_id, _trial_label(trial), int(spec.get("epochs") or 0))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.state.result(trial.trial_id, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            label = _trial_label(trial)
            value = result.get(metric)
            if result.get("status") != "done":
                self.state.finish(trial.trial_id, False, label)
                last = f"{label}: FAILED"
            else:
                self.state.finish(trial.trial_id, True, label, value)
                last = f"{label}: {metric} {value:.4f}" if isinstance(value, float) else label
            say(self.state.line(last))

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.state.retry(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.state.finish(trial.trial_id, False, _trial_label(trial))
            record_lost_trial(trial)
            say(self.state.line(f"{_trial_label(trial)}: ERROR (retries exhausted)"))

    return Progress()


def _trial_label(trial) -> str:
    """A Tune trial's name in the progress lines: a grid point's label, or a search trial's id
    and sampled values."""
    if "point" in trial.config:
        return trial.config["point"]["label"]
    sampled = trial.config.get("sampled", {})
    return f"{trial.trial_id} " + " ".join(f"{k}={v:.3g}" for k, v in sampled.items())


def spec_label(spec) -> str:
    """A grid trial's name in the progress lines: its id's first 8 characters, its model and the
    fields a reader scans for, where they differ from their defaults."""
    changed = spec.non_default()
    keys = [k for k in ("model", "trainable", "random_k", "activation", "norm", "weight_init", "seed") if hasattr(spec, k)]
    parts = [spec.model] if hasattr(spec, "model") else []
    parts += [f"{k}={changed[k]}" for k in keys if k in changed and k != "model"]
    return f"{spec.trial_id[:8]} {' '.join(parts)}".strip()

