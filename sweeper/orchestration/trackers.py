"""The trackers of `--log` as Ray Tune's own logger callbacks (TBXLoggerCallback,
MLflowLoggerCallback, WandbLoggerCallback), each taught two things Tune cannot know:
- a trial's parameters are its spec's fields (and its id and study), not Tune's config, which nests
  the spec under `point` beside the store's URI and the code version;
- a trial is named by its id (TensorBoard's folder, the MLflow run, the W&B run's name).
Metrics are Tune's results as Tune's callbacks log them: every epoch's scalars (test_acc,
train_loss, ...) at step = the epoch (Tune's training_iteration), and the final evaluation last.
They run in the driver, so their files are on the driver's machine (see sweeper.trackers)."""
from __future__ import annotations

import os
import sys
from typing import Any

from sweeper.trackers import (Tracker, mlflow_artifacts, mlflow_uri, tensorboard_dir, wandb_dir,
                              wandb_mode, where)


def trial_params(trial) -> dict[str, Any]:
    """A Tune trial's parameters for a tracker: its spec's fields as the `trials` table holds them
    (scalars; tuples comma-joined), with its trial id and study."""
    from sweeper.experiments import EXPERIMENTS

    config = trial.config
    values = config["point"]["spec"] if "point" in config else {**config["base"], **config["sampled"]}
    spec = EXPERIMENTS[config["experiment"]].spec_type.from_values(dict(values))
    return {"trial_id": spec.trial_id, "study": config["study"], **spec.to_row()}


def _name(trial) -> str:
    return trial_params(trial)["trial_id"]


def tracker_callbacks(trackers: list[Tracker], store, study: str, say=None) -> list:
    """One Tune callback per tracker; `say` is told where each one writes. Every sweep and search
    builds its callbacks here, so this is also where Tune's census of them is turned off (below)."""
    skip_tunes_callback_census()
    if say is not None:
        for line in where(trackers, store, study):
            say(f"{study}: {line}")
    return [_BUILD[t.kind](t, store, study) for t in trackers]


def skip_tunes_callback_census() -> None:
    """Keep Ray Tune from importing every tracker library at each sweep's start.

    Ray 2.60's `tune.run` counts the kinds of callback it is given for its usage statistics
    (`ray.air._internal.usage.tag_callbacks`), and to name them imports its MLflow, W&B, Comet and
    Aim integrations, which import mlflow and wandb whenever they are installed, used or not: 3.4 s
    of every sweep's start on a 2-core machine with both installed. The count is telemetry only; a
    tracker that `--log` asks for still imports its library through its own callback. Where a later
    Ray moves the function, nothing is skipped and nothing breaks."""
    try:
        from ray.air._internal import usage
    except ImportError:
        return
    if callable(getattr(usage, "tag_callbacks", None)):
        usage.tag_callbacks = _no_census


def _no_census(callbacks) -> bool:
    return False  # what tag_callbacks returns when it records nothing


def _tensorboard(tracker: Tracker, store, study: str):
    from ray.tune.logger import TBXLoggerCallback

    class TensorBoard(TBXLoggerCallback):
        """Tune's TensorBoard callback, writing `<folder>/<trial_id>/` (Tune's own choice, the
        trial's folder in its experiment state, is per run and on an object store unreadable)."""

        def __init__(self, folder: str):
            super().__init__()
            self.folder = folder

        def log_trial_start(self, trial):
            if trial in self._trial_writer:
                self._trial_writer[trial].close()
            self._trial_writer[trial] = self._summary_writer_cls(os.path.join(self.folder, _name(trial)),
                                                                 flush_secs=30)
            self._trial_result[trial] = {}

        def _try_log_hparams(self, trial, result):
            from tensorboardX.summary import hparams

            params = {k: v for k, v in trial_params(trial).items() if isinstance(v, (str, bool, int, float))}
            writer = self._trial_writer[trial].file_writer
            for summary in hparams(hparam_dict=params, metric_dict=result):
                writer.add_summary(summary)

    return TensorBoard(str(tensorboard_dir(tracker, store, study)))


def _mlflow(tracker: Tracker, store, study: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflow(MLflowLoggerCallback):
        """Tune's MLflow callback: one run per trial named by its id, the spec as its parameters,
        artifacts (none by default) beside a local store's database."""

        def __init__(self, uri: str, artifacts: str | None):
            super().__init__(uri, experiment_name=study, tags={"study": study})
            self.artifacts = artifacts

        def setup(self, *args, **kwargs):
            from mlflow.tracking import MlflowClient

            self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                                          artifact_location=self.artifacts)
            self.tags = dict(self.tags or {})
            self._trial_runs = {}
            self._client = MlflowClient(self.tracking_uri)

        def __getstate__(self):  # the client holds a database connection: not part of Tune's state
            return {k: v for k, v in self.__dict__.items() if k != "_client"}

        def log_trial_start(self, trial):
            from mlflow.entities import Param

            if trial not in self._trial_runs:
                tags = {**self.tags, "trial_name": str(trial)}
                run = self.mlflow_util.start_run(tags=tags, run_name=_name(trial))
                self._trial_runs[trial] = run.info.run_id
                params = [Param(k, str(v)) for k, v in trial_params(trial).items()]
                self._client.log_batch(self._trial_runs[trial], params=params)

        def log_trial_result(self, iteration, trial, result):
            # One batch per result: Tune's callback writes each metric in its own call (with a
            # check that the run exists), which took seconds per epoch on a local SQLite store and
            # held up the whole sweep's driver.
            import time

            from mlflow.entities import Metric

            if trial not in self._trial_runs:
                self.log_trial_start(trial)
            step = int(result.get("training_iteration") or 0)
            stamp = int(time.time() * 1000)
            metrics = [Metric(k, float(v), stamp, step) for k, v in result.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
            self._client.log_batch(self._trial_runs[trial], metrics=metrics)

        def log_trial_end(self, trial, failed: bool = False):
            run_id = self._trial_runs[trial]
            self.mlflow_util.end_run(run_id=run_id, status="FAILED" if failed else "FINISHED")

    return MLflow(mlflow_uri(tracker, store, study), mlflow_artifacts(tracker, store, study))


def _wandb(tracker: Tracker, store, study: str):
    from ray.air.integrations.wandb import WandbLoggerCallback

    mode = wandb_mode()
    if mode in ("offline", "disabled"):
        # Tune's callback asks for an API key in the driver unless WANDB_MODE says offline.
        os.environ["WANDB_MODE"] = mode

    class Wandb(WandbLoggerCallback):
        """Tune's W&B callback: a run per trial named by its id, the spec as its config, in the
        study's group; files under the tracker folder; the mode chosen in the driver (its logging
        actor does not see the driver's environment on a cluster joined by address)."""

        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            self._held: dict = {}  # trial -> its items (results, the end) not yet on its queue, in order
            self._last: dict = {}  # trial -> the newest call to its queue (the first: one that returns once it is up)
            # Tune's logging actor may restart (max_restarts=-1), which makes Ray warn on every trial
            # that its arguments might be lost by then; a W&B run that cannot go on just ends.
            import ray
            from ray.air.util.node import _force_on_current_node

            # the mode chosen here, whatever the worker inherited (wandb refuses an unknown WANDB_MODE)
            env = {"WANDB_MODE": self.kwargs["mode"]}
            if os.environ.get("WANDB_API_KEY"):
                env["WANDB_API_KEY"] = os.environ["WANDB_API_KEY"]
            self._remote_logger_class = ray.remote(num_cpus=0, max_restarts=0, runtime_env={"env_vars": env},
                                                   **_force_on_current_node())(self._logger_actor_cls)

        # Tune's callback puts each result on the trial's queue actor and waits for the put: the
        # first waits for that actor's process to start (3-9 s here), and on a busy driver host
        # any may take seconds, holding up the driver and every other trial's results (Tune then
        # warns "... may be a performance bottleneck"). Calls to an async actor (the queue) may
        # run out of order, so they cannot simply be fired off. Instead each trial's items wait
        # here in order and go to its queue one at a time, each once the one before has landed,
        # driven by Tune's loop (on_step_end): the driver never waits, except at the very end.
        def log_trial_result(self, iteration, trial, result):
            from ray.air.integrations.wandb import _clean_log, _QueueItem

            if trial not in self._trial_logging_actors:
                self.log_trial_start(trial)
            # its "config" is Tune's (the store's URI, the spec nested under `point`): W&B would
            # merge it into the run's config, which is the spec's fields
            result = {k: v for k, v in result.items() if k != "config"}
            result = _clean_log(result, video_kwargs=self.video_kwargs, image_kwargs=self.image_kwargs)
            self._held.setdefault(trial, []).append((_QueueItem.RESULT, result))
            self._pass_on(trial, wait=False)

        def log_trial_end(self, trial, failed: bool = False):
            from ray.air.integrations.wandb import _QueueItem

            self._held.setdefault(trial, []).append((_QueueItem.END, None))
            self._pass_on(trial, wait=False)
            self._cleanup_logging_actors()  # those whose run has ended (its END went in before)
            for gone in [t for t in self._last if t not in self._trial_queues]:
                del self._last[gone]

        def on_step_end(self, iteration, trials, **info):
            for trial in list(self._held):
                self._pass_on(trial, wait=False)

        def on_experiment_end(self, trials, **info):
            for trial in list(self._held):
                self._pass_on(trial, wait=True)
            super().on_experiment_end(trials, **info)

        def _pass_on(self, trial, wait: bool) -> None:
            """Put the trial's next held items on its queue, each after the one before landed."""
            import ray

            if trial not in self._trial_queues:  # its logging actor is gone: nothing takes them
                self._held.pop(trial, None)
                self._last.pop(trial, None)
                return
            held = self._held.get(trial)
            while held:
                last = self._last.get(trial)
                if last is not None and not ray.wait([last], timeout=60 if wait else 0)[0]:
                    return
                self._last[trial] = self._trial_queues[trial].actor.put.remote(held.pop(0), None)
            self._held.pop(trial, None)

        def _cleanup_logging_actor(self, trial):
            # Tune drops a logging actor whose run has ended without looking at how: a W&B run that
            # failed (a bad WANDB_MODE, an entity without access) would leave no trace but a gap.
            import ray

            try:
                ray.get(self._trial_logging_futures[trial], timeout=0)
            except Exception as e:  # noqa: BLE001 - whatever wandb raised, said in one line
                text = " ".join(str(e).split())
                print(f"sweeper: warning: wandb: the run of trial {_name(trial)} failed: {text[-300:]}",
                      file=sys.stderr, flush=True)
            super()._cleanup_logging_actor(trial)

        def log_trial_start(self, trial):
            exclude = self._exclude_results + self.excludes + ([] if self.log_config else ["config"])
            self._start_logging_actor(
                trial, exclude, id=trial.trial_id, name=_name(trial), resume=False, reinit=True,
                allow_val_change=True, group=self.group, project=self.project, config=trial_params(trial),
                **self.kwargs)
            if trial in self._trial_queues and trial not in self._last:
                self._last[trial] = self._trial_queues[trial].actor.qsize.remote()

    return Wandb(project=tracker.target or study, group=study, dir=str(wandb_dir(store, study)), mode=mode)


_BUILD = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}
