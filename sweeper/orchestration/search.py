"""`run_search`: an Optuna search (Ray Tune's OptunaSearch, optionally with ASHA) over a study's
`search.space` around its one base trial. Sampled trials are ordinary trials in the store; a one-row
file in table `search` names the chosen one.

The search's Optuna study persists in the store's journal (sweeper.searchstorage): optuna-dashboard
opens it, and running the same search again continues it. `num_samples` is the search's total: a
second run asks Optuna for what is left (none when the first finished; raise num_samples to extend
the search), with a sampler that sees every trial told before and is seeded by the seed and the
trials so far, so that its random start-up suggestions are not the first run's over again."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from sweeper.orchestration.checkpoints import checkpoint_config, keep_newest_checkpoint
from sweeper.orchestration.connect import connect
from sweeper.orchestration.progress import RunSummary, progress_callback
from sweeper.orchestration.resources import await_then_begin, trial_resources
from sweeper.orchestration.optuna_study import search_key, told_trials, trial_count, trial_id_of
from sweeper.orchestration.trackers import tracker_callbacks
from sweeper.orchestration.trainable import trial_config, tune_trial
from sweeper.searchstorage import open_storage, save
from sweeper.store import Store
from sweeper.study import Study


def run_search(study: Study, store: Store, base, *, address=None, data_root=None, cpus_per_trial=None,
               gpus_per_trial=None, max_failures=2, checkpoint_seconds=30.0, say=print,
               wait_for_resources=None, trackers=None, view=None) -> RunSummary:
    """An Optuna search (Ray Tune's OptunaSearch, optionally with ASHA) over `study.search.space`
    around the study's one base trial. Sampled trials are ordinary trials in the store; a one-row
    file in table `search` names the chosen one."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from sweeper.trial import now

    search = study.search
    started = time.perf_counter()
    search_id = search.identity(base.trial_id)
    space = {k: (tune.loguniform if kind == "loguniform" else tune.uniform)(low, high)
             for k, (kind, low, high) in search.space.items()}
    cpus, gpus = trial_resources(study, cpus_per_trial, gpus_per_trial)
    before = store.trial_status(study.name)
    found = None
    if store.local or not str(address or "").startswith("ray://"):
        found = open_storage(store, study.name)
    else:
        say(f"{study.name}: warning: through Ray Client the search runs on the cluster's head, away from "
            "this machine's copy of the Optuna journal: this run is not added to it (run it on the head, "
            "or with `sweeper submit`)")
    earlier: set[str] = set()
    results, told = [], []
    started_ray = connect(address)
    try:
        # a searcher proposes one trial at a time: Tune keeps one pending, so shall the wait
        await_then_begin(store, study, cpus, gpus, address, wait_for_resources, 1, say)
        name, seed, storage = f"{study.name}-{search_key(search, base)}", search.seed, None
        if found is not None:
            storage = found.storage()
            told = told_trials(storage, name, search, base, store, study.name)
            earlier = {trial_id_of(base, t.params) for t in told}
            seed = (search.seed + trial_count(storage, name)) % 2**32  # not the first run's start-up points again
            say(f"{study.name}: {found.describe()}")
        remaining = search.num_samples - len(told)
        say(f"{study.name}: Optuna search {search_id}: {search.num_samples} trials over "
            f"{', '.join(search.space)} ({search.mode} {search.metric})"
            + (f", {search.num_samples - remaining} told before, {max(remaining, 0)} to go" if earlier else "")
            + f" -> {store.uri}")
        if remaining > 0:
            results = _fit(study, store, base, space, remaining, OptunaSearch(seed=seed, storage=storage, study_name=name),
                           data_root=data_root, cpus=cpus, gpus=gpus, checkpoint_seconds=checkpoint_seconds,
                           max_failures=max_failures, search_id=search_id, say=say,
                           trackers=trackers, view=view)
    finally:
        if started_ray:
            ray.shutdown()
        if found is not None:
            save(store, found)  # an object store's copy

    spec_type = type(base)
    ran = set()
    for result in results:
        if result.config:
            ran.add(spec_type.from_values({**base.to_dict(), **result.config["sampled"]}).trial_id)
    ids = ran | earlier
    after = store.trial_status(study.name)
    summary = RunSummary(study.name, planned=search.num_samples, skipped=len(earlier | (ran & before.done)))
    summary.ran = len(ran - before.done - earlier)
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
            "trials": len(ids), "space": repr(search.space), "asha": search.asha, "ended_at": now(),
        })
        say(f"{study.name}: search {search_id} chose {best['trial_id']} ({search.metric} {best[search.metric]:.4f})")
    summary.seconds = time.perf_counter() - started
    return summary


def _fit(study, store, base, space, num_samples, searcher, *, data_root, cpus, gpus, checkpoint_seconds,
         max_failures, search_id, say, trackers=None, view=None):
    """One Tune run of `num_samples` more trials suggested by `searcher`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    search = study.search
    scheduler = None
    if search.asha:
        epochs = getattr(base, "epochs", 1) or 1
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1)
    tuner = tune.Tuner(
        tune.with_resources(_search_point, {"cpu": cpus, "gpu": gpus}),
        param_space={**trial_config(study, store, data_root, cpus, gpus, checkpoint_seconds),
                     "base": base.to_dict(), "sampled": space, "early_stopping": search.asha},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric=search.metric,
            mode=search.mode,
            num_samples=num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"search-{search_id}-{int(time.time())}",
            **store.tune_storage(study.name),
            verbose=0,
            callbacks=[progress_callback(num_samples, 0, say, search.metric, search.mode, view),
                       keep_newest_checkpoint(), *tracker_callbacks(trackers or [], store, study.name, say)],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=checkpoint_config(),
        ),
    )
    with view or nullcontext():
        return tuner.fit()


def _search_point(config: dict[str, Any]) -> None:
    """The search's trainable: the base spec with the sampled values (a finished one is reused)."""
    tune_trial({**config, "spec": {**config["base"], **config["sampled"]}, "reuse_done": True})
