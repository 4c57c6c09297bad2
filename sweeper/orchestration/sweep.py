"""`run_study`: every trial of a study that the store lacks, as one Ray Tune grid (a study with a
`search` goes to search.py instead)."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable

from sweeper import reuse as reuselib
from sweeper.orchestration.checkpoints import checkpoint_config, keep_newest_checkpoint
from sweeper.orchestration.connect import connect
from sweeper.orchestration.progress import RunSummary, progress_callback, spec_label
from sweeper.orchestration.resources import await_then_begin, begin, trial_resources
from sweeper.orchestration.search import run_search
from sweeper.orchestration.trackers import tracker_callbacks
from sweeper.orchestration.trainable import trial_config, tune_trial
from sweeper.store import Store
from sweeper.study import Study


def run_study(
    study: Study,
    store: Store,
    *,
    address: str | None = None,
    data_root: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_failures: int = 2,
    checkpoint_seconds: float = 30.0,
    rerun: set[str] | None = None,
    say: Callable[[str], None] = print,
    reuse_actors: bool = True,
    wait_for_resources: float | None = None,
    trackers: list | None = None,
    view=None,
    reuse: bool = True,
) -> RunSummary:
    """Run every trial of `study` that the store does not have as done. Failed trials are
    retried; trials in `rerun` run again even when done. `reuse_actors=False` is Tune's default
    (a fresh worker per trial), kept for `sweeper bench` to compare against.
    `wait_for_resources`: seconds to wait for a node that can hold one trial (see
    `resources.await_resources`); None: REMOTE_WAIT_S on a cluster joined by address, 0 on the local one.
    `trackers`: `sweeper.trackers.Tracker`s (`--log`) that see every trial's parameters and epochs.
    `view`: a `live.LiveView` that draws the sweep while it runs (None: the lines `say` says).
    `reuse`: take the results of trials another study of the store has done with the same
    training instead of training them again (sweeper.reuse); never for the trials in `rerun`."""
    started = time.perf_counter()
    specs = study.specs()
    if study.search is not None:
        return run_search(study, store, specs[0], address=address, data_root=data_root,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          max_failures=max_failures, checkpoint_seconds=checkpoint_seconds, say=say,
                          wait_for_resources=wait_for_resources, trackers=trackers, view=view)
    status = store.trial_status(study.name)
    for path in status.corrupt:
        say(f"warning: {path}: unreadable trials file; its trial runs again")
    rerun = rerun or set()
    todo = [s for s in specs if s.trial_id not in status.done or s.trial_id in rerun]
    summary = RunSummary(study.name, planned=len(specs), skipped=len(specs) - len(todo))
    if summary.skipped:
        say(f"{study.name}: {summary.skipped} of {len(specs)} trials already in the store; skipped")
    if reuse:
        fresh = [s for s in todo if s.trial_id not in rerun]
        donors = reuselib.find(store, study.name, fresh)
        summary.reused = reuselib.adopt(store, study.name, fresh, donors, say)
        todo = [s for s in todo if s.trial_id not in donors]
    if not todo:
        begin(store, study)  # nothing left to run: the plan is still the one the user now means
        summary.seconds = time.perf_counter() - started
        return summary

    import ray
    from ray import tune

    cpus, gpus = trial_resources(study, cpus_per_trial, gpus_per_trial)
    started_ray = connect(address)
    try:
        await_then_begin(store, study, cpus, gpus, address, wait_for_resources, len(todo), say)
        say(f"{study.name}: running {len(todo)} trials ({cpus:g} CPU, {gpus:g} GPU each) -> {store.uri}")
        by_label = {s.trial_id: spec_label(s) for s in todo}
        common = trial_config(study, store, data_root, cpus, gpus, checkpoint_seconds)
        points = [{"spec": s.to_dict(), "label": by_label[s.trial_id], "trial_id": s.trial_id} for s in todo]
        param_space = {**common, "point": tune.grid_search(points)}
        trainable = tune.with_resources(_flatten_point, {"cpu": cpus, "gpu": gpus})
        from sweeper.experiments import EXPERIMENTS

        experiment = EXPERIMENTS[study.experiment]
        progress = progress_callback(len(todo), summary.skipped, say, experiment.metric, experiment.mode, view)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                reuse_actors=reuse_actors,
                trial_dirname_creator=lambda t: t.config["point"]["trial_id"],
                trial_name_creator=lambda t: t.config["point"]["trial_id"],
            ),
            run_config=tune.RunConfig(
                name=f"sweep-{int(time.time())}",
                **store.tune_storage(study.name),  # storage_path, and an object store's filesystem
                verbose=0,
                callbacks=[progress, keep_newest_checkpoint(), *tracker_callbacks(trackers or [], store, study.name, say)],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=checkpoint_config(),
            ),
        )
        with view or nullcontext():
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()

    after = store.trial_status(study.name)
    ids = {s.trial_id for s in todo}
    summary.ran = len(todo)
    summary.done = len(ids & after.done)
    summary.failed = {t: e for t, e in after.failed.items() if t in ids}
    summary.missing = len(ids - after.done - set(after.failed))
    summary.seconds = time.perf_counter() - started
    return summary


def _flatten_point(config: dict[str, Any]) -> None:
    """The grid's trainable: the trial of one grid point."""
    point = config["point"]
    tune_trial({**config, "spec": point["spec"], "label": point["label"]})
