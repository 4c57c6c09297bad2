"""A Tune callback that lets a stop signal out of Tune's loop even when its first KeyboardInterrupt
was swallowed on the way (see sweeper.interrupt): at every step of the loop, it raises again."""
from __future__ import annotations


def stop_on_signal():
    from ray import tune

    from sweeper import interrupt

    class StopOnSignal(tune.Callback):
        def on_step_begin(self, iteration, trials, **info):
            interrupt.raise_if_stopped()

    return StopOnSignal()
