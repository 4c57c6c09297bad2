"""The Tune trainable: one trial of a sweep as a Ray Tune function trainable around
`sweeper.trial.execute`, reporting each epoch to Tune and checkpointing its state; and the
driver's record of a trial whose process died on every attempt.

A trial's config (built by `trial_config` and the sweep or search that adds its point):
  experiment, study, store, data_root, code_version, cpus, gpus, checkpoint_seconds
  point: {spec, label, trial_id}     a grid trial (sweep.py)
  base + sampled                     a search trial: the base spec with the sampled values (search.py)
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from sweeper.store import Store


def trial_config(study, store: Store, data_root, cpus: float, gpus: float, checkpoint_seconds: float
                 ) -> dict[str, Any]:
    """What every trial of a sweep shares (the driver's code version: a node's may differ)."""
    from sweeper.version import code_version

    return {
        "experiment": study.experiment,
        "study": study.name,
        "store": store.uri,
        "data_root": data_root,
        "code_version": code_version(),
        "cpus": cpus,
        "gpus": gpus,
        "checkpoint_seconds": checkpoint_seconds,
    }


def tune_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: rebuild the spec, run it with a callback that reports each
    epoch to Tune and checkpoints its state, resume from Tune's checkpoint if there is one."""
    import ray
    import torch
    from ray import tune

    from sweeper.experiments import EXPERIMENTS
    from sweeper.trial import TrialContext, execute
    from sweeper.version import code_version

    experiment = EXPERIMENTS[config["experiment"]]
    spec = experiment.spec_type.from_values(dict(config["spec"]))

    def result_scalars(row: dict[str, Any]) -> dict[str, float]:
        # the float result columns of a trials row: what Tune sees of a finished trial (a search's
        # metric is one of them)
        return {k: row[k] for k, t in experiment.columns.items() if t is float and isinstance(row.get(k), float)}

    if config.get("reuse_done"):  # a search that proposes a finished trial gets its stored result
        row = Store(config["store"]).trial_row(config["study"], spec.trial_id)
        if row and row["status"] == "done":
            tune.report({"status": "done", "trial_done": 1, "reused": 1, "epoch": row.get("epochs") or 0,
                         **result_scalars(row)})
            return
    cpus = float(config["cpus"])
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    ctx = TrialContext(
        study=config["study"],
        store=Store(config["store"]),
        data_root=config["data_root"],
        code_version=code_version(),  # of the code this node runs, which the driver's may not be
        cpus=cpus,
        gpus=float(config["gpus"]),
        node_id=ray.get_runtime_context().get_node_id(),
        early_stopping=bool(config.get("early_stopping")),
    )
    every = float(config["checkpoint_seconds"])
    last = [time.monotonic()]

    def report_to_tune(progress) -> None:
        if progress.end or progress.epoch == progress.epochs:
            return  # the last epoch is reported after the trial commits (a scheduler may stop here)
        report = {"epoch": progress.epoch, "node_id": ctx.node_id,
                  **{k: v for k, v in progress.metrics.items() if isinstance(v, (int, float))}}
        if progress.state is not None and time.monotonic() - last[0] >= every:
            with tempfile.TemporaryDirectory() as d:
                torch.save(progress.state(), os.path.join(d, "state.pt"))
                checkpoint = tune.Checkpoint.from_directory(d)
                # which node wrote it, at which epoch: readable in the checkpoint as it lands (Tune's
                # result.json reaches the store only at its periodic sync, see checkpoints.py)
                checkpoint.set_metadata({"node_id": ctx.node_id, "epoch": progress.epoch})
                tune.report(report, checkpoint=checkpoint)
            last[0] = time.monotonic()
        else:
            tune.report(report)

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(os.path.join(d, "state.pt"), weights_only=True)
    row = execute(spec, ctx, threads=threads, callbacks=[report_to_tune], resume=resume)
    final = {"status": row["status"], "trial_done": 1, "epoch": getattr(spec, "epochs", 0) or 0,
             **result_scalars(row)}
    tune.report(final)


def record_lost_trial(trial) -> None:
    """A trial whose process died on every attempt (out of memory, a node lost each time) wrote no
    row of its own: record it as failed from the driver, so the summary, `sweeper status` and the
    next run see it. A row the trial did commit is never overwritten."""
    from sweeper.experiments import EXPERIMENTS
    from sweeper.trial import TrialContext, TrialResult, _commit, now

    config = trial.config
    spec_values = config["point"]["spec"] if "point" in config else {**config["base"], **config["sampled"]}
    spec = EXPERIMENTS[config["experiment"]].spec_type.from_values(dict(spec_values))
    store = Store(config["store"])
    if store.trial_row(config["study"], spec.trial_id) is not None:
        return
    message = str(getattr(trial, "error_msg", None) or "the trial's process died")
    ctx = TrialContext(study=config["study"], store=store, code_version=config["code_version"],
                       cpus=config["cpus"], gpus=config["gpus"])
    _commit(spec, ctx, now(), "failed", f"lost after all retries: {message.strip().splitlines()[-1] if message.strip() else message}",
            TrialResult({}, {}))

