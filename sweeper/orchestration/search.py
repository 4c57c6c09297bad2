"""`run_search`: an Optuna search (Ray Tune's OptunaSearch, optionally with ASHA) over a study's
`search.space` around its one base trial. Sampled trials are ordinary trials in the store; a one-row
file in table `search` names the chosen one."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from sweeper.orchestration.checkpoints import checkpoint_config, keep_newest_checkpoint
from sweeper.orchestration.connect import connect
from sweeper.orchestration.progress import RunSummary, progress_callback
from sweeper.orchestration.resources import await_then_mark, trial_resources
from sweeper.orchestration.trackers import tracker_callbacks
from sweeper.orchestration.trainable import trial_config, tune_trial
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
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeper.trial import now

    search = study.search
    started = time.perf_counter()
    search_id = search.identity(base.trial_id)
    space = {k: (tune.loguniform if kind == "loguniform" else tune.uniform)(low, high)
             for k, (kind, low, high) in search.space.items()}
    cpus, gpus = trial_resources(study, cpus_per_trial, gpus_per_trial)
    before = store.trial_status(study.name)
    started_ray = connect(address)
    try:
        # a searcher proposes one trial at a time: Tune keeps one pending, so shall the wait
        await_then_mark(store, study.name, cpus, gpus, address, wait_for_resources, 1, say)
        say(f"{study.name}: Optuna search {search_id}: {search.num_samples} trials over "
            f"{', '.join(search.space)} ({search.mode} {search.metric}) -> {store.uri}")
        scheduler = None
        if search.asha:
            epochs = getattr(base, "epochs", 1) or 1
            scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1)
        tuner = tune.Tuner(
            tune.with_resources(_search_point, {"cpu": cpus, "gpu": gpus}),
            param_space={**trial_config(study, store, data_root, cpus, gpus, checkpoint_seconds),
                         "base": base.to_dict(), "sampled": space, "early_stopping": search.asha},
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
                callbacks=[progress_callback(search.num_samples, 0, say, search.metric, search.mode, view),
                           keep_newest_checkpoint(), *tracker_callbacks(trackers or [], store, study.name, say)],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=checkpoint_config(),
            ),
        )
        with view or nullcontext():
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
            "trials": len(ids), "space": repr(search.space), "asha": search.asha, "ended_at": now(),
        })
        say(f"{study.name}: search {search_id} chose {best['trial_id']} ({search.metric} {best[search.metric]:.4f})")
    summary.seconds = time.perf_counter() - started
    return summary


def _search_point(config: dict[str, Any]) -> None:
    """The search's trainable: the base spec with the sampled values (a finished one is reused)."""
    tune_trial({**config, "spec": {**config["base"], **config["sampled"]}, "reuse_done": True})
