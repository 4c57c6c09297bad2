"""Ray's cost: per-trial overhead and sweep efficiency, measured through the sweeps users run
(`sweeper.orchestration.sweep.run_study`) on a local cluster that sweeper.orchestration starts."""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from sweeper.bench.common import resolve_cifar_root
from sweeper.orchestration.resources import cluster_cpus


def overhead_study(name: str, trials: int, cpus: float):
    """Tiny real trials (digits, ResNet-8 at width 8, BN-only, one epoch of 128 images): the
    sweep's full path (spec, Tune trial, run_trial, Parquet commit) with little work in it."""
    from sweeper.study import Study

    return Study(
        name=name,
        dataset="digits",
        axes={"seed": list(range(trials))},
        recipe={"model": "resnet-8", "width": 8, "trainable": "bn", "epochs": 1, "train_size": 128,
                "test_size": 64, "batch_size": 64, "augment": "none"},
        measure=["bn"],
        resources={"cpu": cpus, "gpu": 0},
    )


def cifar_study(name: str, trials: int, epochs: int, train_size: int, test_size: int, dataset: str):
    """A short CIFAR sweep as a user runs it: BN-only ResNet-14 (the paper's recipe otherwise),
    one CPU per trial, seeds as the axis."""
    from sweeper.study import Study

    return Study(
        name=name,
        dataset=dataset,
        axes={"seed": list(range(trials))},
        recipe={"model": "resnet-14", "trainable": "bn", "epochs": epochs, "train_size": train_size,
                "test_size": test_size, "batch_size": 128,
                "augment": "crop_flip" if dataset != "digits" else "none"},
        measure=["bn"],
        resources={"cpu": 1, "gpu": 0},
    )


def timed_sweep(study, data_root: str | None = None, reuse_actors: bool = True, **kwargs) -> dict[str, Any]:
    """Run `study` through `run_study` into a throwaway store; return the wall time,
    the in-trial seconds of every trial (`train_seconds`, measured inside run_trial) and the
    driver-side completion times of the trials (from the sweep's progress lines)."""
    from sweeper.orchestration.sweep import run_study
    from sweeper.store import Store

    root = tempfile.mkdtemp(prefix="sweeper-bench-")
    try:
        store = Store(root)
        completions: list[tuple[float, str]] = []

        def say(line: str) -> None:
            if "<- " in line:  # "[k/N] ... <- <trial id prefix> label: ..."
                completions.append((time.perf_counter(), line.split("<- ", 1)[1][:8]))

        t0 = time.perf_counter()
        summary = run_study(study, store, data_root=data_root, say=say, reuse_actors=reuse_actors, **kwargs)
        wall = time.perf_counter() - t0
        trials = store.read(study.name, "trials", columns=["trial_id", "status", "train_seconds", "cpus"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if summary.done != summary.planned:
        raise RuntimeError(f"bench sweep {study.name}: {summary.done} of {summary.planned} trials done "
                           f"({summary.failed or 'missing trials'})")
    work = {t[:8]: float(s) for t, s in zip(trials["trial_id"], trials["train_seconds"])}
    return {
        "wall_s": wall,
        "trials": len(trials),
        "work_s": work,
        "cpus": {t[:8]: float(c) for t, c in zip(trials["trial_id"], trials["cpus"])},
        "completions": [(ts - t0, tid) for ts, tid in completions],
    }


def _overhead_from(run: dict[str, Any]) -> dict[str, Any]:
    """Per-trial overhead of a serial sweep, (wall - sum of work) / trials, split exactly into
    the sweep's one-off start and end (time to the first trial's completion minus its work, plus
    the time after the last completion) and a marginal part per further trial (the gap between
    consecutive completions minus the later trial's work)."""
    n, wall, work = run["trials"], run["wall_s"], sum(run["work_s"].values())
    out = {"trials": n, "wall_s": round(wall, 3), "work_s": round(work, 3),
           "per_trial_s": round((wall - work) / n, 4)}
    done = run["completions"]
    if len(done) == n and all(tid in run["work_s"] for _, tid in done) and n >= 3:
        gaps = [(b[0] - a[0]) - run["work_s"][b[1]] for a, b in zip(done, done[1:])]
        out["marginal_per_trial_s"] = round(statistics.mean(gaps), 4)
        out["marginal_median_s"] = round(statistics.median(gaps), 4)
        out["marginal_max_s"] = round(max(gaps), 4)
        out["first_trial_done_s"] = round(done[0][0], 3)
        out["first_trial_work_s"] = round(run["work_s"][done[0][1]], 3)
        out["start_s"] = round(done[0][0] - run["work_s"][done[0][1]], 3)  # plan, Tune start, worker imports
        out["end_s"] = round(wall - done[-1][0], 3)  # Tune's shutdown, the final store check
        # per_trial_s == (start_s + end_s + (n - 1) * marginal_per_trial_s) / n
    return out


def measure_trial_overhead(trials: int = 16, reuse_actors: bool = True, cpus: float | None = None) -> dict[str, Any]:
    """Per-trial Ray overhead of `trials` tiny trials run one at a time (each asks for every CPU
    of the running cluster) through `run_study`. Needs a running Ray cluster
    (sweeper.orchestration.connect.local_cluster)."""
    cpus = float(cpus or cluster_cpus(default=1))
    study = overhead_study(f"bench-overhead-{'reuse' if reuse_actors else 'default'}", trials, cpus)
    out = _overhead_from(timed_sweep(study, reuse_actors=reuse_actors))
    out["reuse_actors"] = reuse_actors
    return out


def measure_sweep_efficiency(trials: int = 4, epochs: int = 2, train_size: int = 5120, test_size: int = 1000,
                             data_root: str | None = None, ray_start_s: float = 0.0,
                             dataset: str | None = None) -> dict[str, Any]:
    """sum(in-trial seconds x CPUs) / (wall x cores) for a short CIFAR sweep through `run_study`
    (digits when no CIFAR-10 is found, or when asked for). The cluster is already up (as after `ray up`); the
    efficiency counting Ray's start-up too is reported beside it."""
    root = resolve_cifar_root(data_root) if dataset in (None, "cifar10") else None
    dataset = "cifar10" if root else "digits"
    study = cifar_study("bench-sweep", trials, epochs, train_size if root else 0, test_size if root else 0, dataset)
    run = timed_sweep(study, data_root=str(root) if root else None)
    cores = cluster_cpus(default=os.cpu_count())
    busy = sum(run["work_s"][t] * run["cpus"][t] for t in run["work_s"])
    return {
        "dataset": dataset,
        "trials": run["trials"],
        "epochs": epochs,
        "train_size": train_size if root else "all",
        "cores": cores,
        "wall_s": round(run["wall_s"], 3),
        "in_trial_cpu_s": round(busy, 3),
        "efficiency": round(busy / (run["wall_s"] * cores), 4),
        "efficiency_with_ray_start": round(busy / ((run["wall_s"] + ray_start_s) * cores), 4),
        "per_trial_work_s": round(busy / max(run["trials"], 1), 3),
    }

