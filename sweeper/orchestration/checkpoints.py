"""Trial checkpoints without Tune's forced experiment snapshots.

A trial checkpoints its state at most every `checkpoint_seconds` (trainable.py) so that a trial
lost with its node resumes where it was. Only its newest checkpoint is ever needed.

Tune's way to keep one, `CheckpointConfig(num_to_keep=1)`, also makes the driver snapshot the
whole experiment state (every trial, pickled) and sync it to storage each time any trial has
checkpointed `num_to_keep` times since the last snapshot (`sync_every_n_trial_checkpoints` in
ray/tune/execution/experiment_state.py): so that a `Tuner.restore` never finds a state naming a
checkpoint it has since deleted. With several trials checkpointing each epoch that is a snapshot
every few seconds, and Tune says so, again and again, in its "Experiment state snapshotting has
been triggered multiple times ..." paragraph. sweeper never restores an experiment (the store is
the record of what is done; a new run plans what it lacks), so the snapshots buy nothing.

So Tune keeps every checkpoint (`num_to_keep=None`: no forced snapshot; the experiment state is
saved on Tune's own adaptive period), and this callback, in the driver, deletes a trial's previous
checkpoint once Tune has registered its next one: at most two per trial exist at any moment, and
the newest is the one Tune resumes a recovered trial from.
"""
from __future__ import annotations


def checkpoint_config():
    """`RunConfig(checkpoint_config=...)` for sweeps and searches."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=None)  # see the module's docstring


def keep_newest_checkpoint():
    """A Tune callback deleting each trial's previous checkpoint when it registers a new one."""
    from ray import tune

    class KeepNewest(tune.Callback):
        def __init__(self):
            self.newest: dict[str, str] = {}  # Tune's trial id -> path of its newest checkpoint

        def __reduce__(self):  # pickled into the experiment state: a class made here, by its maker
            return keep_newest_checkpoint, ()

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            previous = self.newest.get(trial.trial_id)
            self.newest[trial.trial_id] = checkpoint.path
            if previous and previous != checkpoint.path:
                try:
                    checkpoint.filesystem.delete_dir(previous)
                except OSError:  # gone already (a retried trial); nothing to keep tidy
                    pass

    return KeepNewest()
