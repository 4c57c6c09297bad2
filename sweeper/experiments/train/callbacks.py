"""What hangs on the training loop, as callbacks with one signature (open_lth's
`standard_callbacks`): ``callback(progress: sweeper.experiment.Progress) -> None``.

The loop calls every callback after each epoch and once at the end of training (`progress.end`),
after the final evaluation. The standard callbacks are the study's measurements, which act at the
end; the runner adds its own (progress reports to Ray Tune, and checkpoints of `progress.state`).
"""
from __future__ import annotations

from sweeper.experiment import Callback, Progress
from sweeper.experiments.train.measures import MEASUREMENTS


def measurement(name: str) -> Callback:
    """Run measurement `name` at the end of training; its tables join the trial's."""
    measure = MEASUREMENTS[name]

    def callback(progress: Progress) -> None:
        if progress.end:
            progress.tables.update(measure(progress.context))

    return callback


def standard_callbacks(spec) -> list[Callback]:
    """The callbacks every trial of a TrainSpec runs: its measurements, in the order it lists them."""
    return [measurement(name) for name in spec.measure]
