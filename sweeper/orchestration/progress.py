"""What a sweep tells its user: one line per finished trial (counts, the best value so far), and
the summary it returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sweeper.orchestration.trainable import record_lost_trial


@dataclass
class RunSummary:
    """What one `run_study` (or search) did, for the command's last lines and exit status."""

    study: str
    planned: int
    skipped: int  # already done in the store
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


def progress_callback(total: int, skipped: int, say: Callable[[str], None], metric: str, mode: str):
    """A Tune callback saying one line per finished trial; `skipped` trials were done before."""
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished trial: counts and the best accuracy so far."""

        def __init__(self):
            self.started, self.finished, self.failed, self.best = set(), 0, 0, None

        def __reduce__(self):
            # Tune pickles its callbacks into the experiment state; `say` (print, a logger) is the
            # driver's alone and need not be picklable, so a restored copy starts afresh.
            return progress_callback, (total, skipped, _discard, metric, mode)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.add(trial.trial_id)

        def _line(self, trials, last):
            running = len(self.started) - self.finished
            pending = total - self.finished - running
            best = f" · best {metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
            say(
                f"[{self.finished + skipped}/{total + skipped}] {self.finished - self.failed} done, "
                f"{running} running, {pending} pending, {self.failed} failed{best}  <- {last}"
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            self.finished += 1
            label = _trial_label(trial)
            if result.get("status") != "done":
                self.failed += 1
                last = f"{label}: FAILED"
            else:
                value = result.get(metric)
                lower = mode == "min"
                if isinstance(value, float) and (self.best is None or (value < self.best[0] if lower else value > self.best[0])):
                    self.best = (value, label)
                last = f"{label}: {metric} {value:.4f}" if isinstance(value, float) else label
            self._line(trials, last)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.finished += 1
            self.failed += 1
            record_lost_trial(trial)
            self._line(trials, f"{_trial_label(trial)}: ERROR (retries exhausted)")

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

