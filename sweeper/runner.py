"""The runner: the only module that imports Ray. It turns a study's missing trials into Ray Tune
trials, one `sweeper.trial.execute` each, and reports progress.

Why it looks like this:
- The store, not Tune's experiment state, is the record of what is done: a re-run (after a killed
  driver, a failed trial, a new seed) plans only what the store lacks. Tune's state under
  `<store>/<study>/_tune` serves only to resume a trial from its last checkpoint after a lost node.
- Actors are reused between trials (Tune's per-trial start-up cost is otherwise ~1.7 s here), and
  each trial sets torch's threads to its CPU count (oversubscription made two trials 5x slower).
- Only scalars go to Tune (it keeps statistics of every metric); tables go straight to Parquet.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sweeper.errors import SweeperError
from sweeper.store import Store
from sweeper.study import Study

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines replace Tune's tables


@dataclass
class RunSummary:
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


# -- connecting ------------------------------------------------------------------------------
def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail within seconds, not minutes, when no Ray cluster answers at `address`."""
    if address in ("auto",):
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not os.environ.get("RAY_ADDRESS") and not current.exists():
            raise SweeperError("no Ray cluster is running on this host (start one with `ray start --head`)", "--address")
        return
    if address == "local":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweeperError(f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}", "--address")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise SweeperError(f"no Ray cluster answers at {address} ({e.strerror or e})", "--address") from None


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Start an embedded local cluster (address None) or join one. Returns True when this call
    started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,  # no open port on a laptop; `ray start` users opt in
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        check_address(address)
        ray.init(address=address, log_to_driver=False)
    return True


# -- the trial function -------------------------------------------------------------------------
def tune_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: rebuild the spec, run it with a callback that reports each
    epoch to Tune and checkpoints its state, resume from Tune's checkpoint if there is one."""
    import ray
    import torch
    from ray import tune

    from sweeper.experiments import EXPERIMENTS
    from sweeper.trial import TrialContext, execute

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
        code_version=config["code_version"],
        cpus=cpus,
        gpus=float(config["gpus"]),
        node_id=ray.get_runtime_context().get_node_id(),
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
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
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


# -- progress -----------------------------------------------------------------------------------
def _progress_callback(total: int, skipped: int, say: Callable[[str], None], metric: str, mode: str):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished trial: counts and the best accuracy so far."""

        def __init__(self):
            self.started, self.finished, self.failed, self.best = set(), 0, 0, None

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


def _trial_label(trial) -> str:
    if "point" in trial.config:
        return trial.config["point"]["label"]
    sampled = trial.config.get("sampled", {})
    return f"{trial.trial_id} " + " ".join(f"{k}={v:.3g}" for k, v in sampled.items())


def _label(spec) -> str:
    changed = spec.non_default()
    keys = [k for k in ("model", "trainable", "activation", "norm", "weight_init", "seed") if hasattr(spec, k)]
    parts = [spec.model] if hasattr(spec, "model") else []
    parts += [f"{k}={changed[k]}" for k in keys if k in changed and k != "model"]
    return f"{spec.trial_id[:8]} {' '.join(parts)}".strip()


# -- the sweep -----------------------------------------------------------------------------------
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
) -> RunSummary:
    """Run every trial of `study` that the store does not have as done. Failed trials are
    retried; trials in `rerun` run again even when done. `reuse_actors=False` is Tune's default
    (a fresh worker per trial), kept for `sweeper bench` to compare against."""
    started = time.perf_counter()
    specs = study.specs()
    if study.search is not None:
        return run_search(study, store, specs[0], address=address, data_root=data_root,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          max_failures=max_failures, checkpoint_seconds=checkpoint_seconds, say=say)
    status = store.trial_status(study.name)
    for path in status.corrupt:
        say(f"warning: {path}: unreadable trials file; its trial runs again")
    rerun = rerun or set()
    todo = [s for s in specs if s.trial_id not in status.done or s.trial_id in rerun]
    summary = RunSummary(study.name, planned=len(specs), skipped=len(specs) - len(todo))
    if summary.skipped:
        say(f"{study.name}: {summary.skipped} of {len(specs)} trials already in the store; skipped")
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary

    import ray
    from ray import tune

    cpus, gpus = _resources(study, cpus_per_trial, gpus_per_trial)
    started_ray = connect(address)
    try:
        _check_resources(cpus, gpus)
        say(f"{study.name}: running {len(todo)} trials ({cpus:g} CPU, {gpus:g} GPU each) -> {store.uri}")
        by_label = {s.trial_id: _label(s) for s in todo}
        common = _common_config(study, store, data_root, cpus, gpus, checkpoint_seconds)
        points = [{"spec": s.to_dict(), "label": by_label[s.trial_id], "trial_id": s.trial_id} for s in todo]
        param_space = {**common, "point": tune.grid_search(points)}
        trainable = tune.with_resources(_flatten_point, {"cpu": cpus, "gpu": gpus})
        from sweeper.experiments import EXPERIMENTS

        experiment = EXPERIMENTS[study.experiment]
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
                callbacks=[_progress_callback(len(todo), summary.skipped, say, experiment.metric, experiment.mode)],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
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
    point = config["point"]
    tune_trial({**config, "spec": point["spec"], "label": point["label"]})


def _search_point(config: dict[str, Any]) -> None:
    tune_trial({**config, "spec": {**config["base"], **config["sampled"]}, "reuse_done": True})


def _resources(study: Study, cpus_per_trial, gpus_per_trial) -> tuple[float, float]:
    cpus = float(cpus_per_trial if cpus_per_trial is not None else study.resources.get("cpu", 1))
    gpus = float(gpus_per_trial if gpus_per_trial is not None else study.resources.get("gpu", 0))
    return cpus, gpus


def _check_resources(cpus: float, gpus: float) -> None:
    import ray

    available = ray.cluster_resources()
    if cpus > available.get("CPU", 0) or gpus > available.get("GPU", 0):
        raise SweeperError(
            f"each trial asks for {cpus:g} CPU and {gpus:g} GPU, but the cluster has "
            f"{available.get('CPU', 0):g} CPU and {available.get('GPU', 0):g} GPU",
            "resources",
        )


def _common_config(study, store, data_root, cpus, gpus, checkpoint_seconds) -> dict[str, Any]:
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


def run_search(study: Study, store: Store, base, *, address=None, data_root=None, cpus_per_trial=None,
               gpus_per_trial=None, max_failures=2, checkpoint_seconds=30.0, say=print) -> RunSummary:
    """An Optuna search (Ray Tune's OptunaSearch, optionally with ASHA) over `study.search.space`
    around the study's one base trial. Sampled trials are ordinary trials in the store; a one-row
    file in table `search` names the chosen one."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    search = study.search
    started = time.perf_counter()
    search_id = search.identity(base.trial_id)
    space = {k: (tune.loguniform if kind == "loguniform" else tune.uniform)(low, high)
             for k, (kind, low, high) in search.space.items()}
    cpus, gpus = _resources(study, cpus_per_trial, gpus_per_trial)
    before = store.trial_status(study.name)
    started_ray = connect(address)
    try:
        _check_resources(cpus, gpus)
        say(f"{study.name}: Optuna search {search_id}: {search.num_samples} trials over "
            f"{', '.join(search.space)} ({search.mode} {search.metric}) -> {store.uri}")
        scheduler = None
        if search.asha:
            epochs = getattr(base, "epochs", 1) or 1
            scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1)
        tuner = tune.Tuner(
            tune.with_resources(_search_point, {"cpu": cpus, "gpu": gpus}),
            param_space={**_common_config(study, store, data_root, cpus, gpus, checkpoint_seconds),
                         "base": base.to_dict(), "sampled": space},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(seed=search.seed),
                scheduler=scheduler,
                metric=search.metric,
                mode=search.mode,
                num_samples=search.num_samples,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"search-{search_id}-{int(time.time())}",
                **store.tune_storage(study.name),
                verbose=0,
                callbacks=[_progress_callback(search.num_samples, 0, say, search.metric, search.mode)],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()

    spec_type = type(base)
    ids = set()
    for result in results:
        if result.config:
            ids.add(spec_type.from_values({**base.to_dict(), **result.config["sampled"]}).trial_id)
    after = store.trial_status(study.name)
    summary = RunSummary(study.name, planned=search.num_samples, skipped=len(ids & before.done))
    summary.ran = len(ids - before.done)
    summary.done = len(ids & after.done)
    summary.failed = {t: e for t, e in after.failed.items() if t in ids}
    summary.missing = len(ids - after.done - set(after.failed) - after.stopped)
    trials = store.read(study.name, "trials")
    trials = trials[trials["trial_id"].isin(ids) & (trials["status"] == "done")]
    if len(trials) and search.metric in trials:
        best = trials.sort_values(search.metric, ascending=search.mode == "min").iloc[0]
        summary.best = (float(best[search.metric]), best["trial_id"])
        store.append_row(study.name, "search", search_id, {
            "search_id": search_id, "base_trial_id": base.trial_id, "chosen_trial_id": best["trial_id"],
            "metric": search.metric, "mode": search.mode, "value": float(best[search.metric]),
            "trials": len(ids), "space": repr(search.space), "asha": search.asha, "ended_at": _now(),
        })
        say(f"{study.name}: search {search_id} chose {best['trial_id']} ({search.metric} {best[search.metric]:.4f})")
    summary.seconds = time.perf_counter() - started
    return summary


def _now() -> str:
    from sweeper.trial import now

    return now()
