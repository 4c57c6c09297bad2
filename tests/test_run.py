"""Studies through a real local Ray cluster into Parquet and back."""
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from sweeper.orchestration.sweep import run_study
from sweeper.store import Store
from sweeper.study import Study

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", recipe={"model": "resnet-8-4", "epochs": 1, "batch_size": 128, "augment": "none"})


def test_the_embedded_cluster_offers_the_cpus_sweeper_local_cpus_names():
    """What `sweeper run` starts without --address: $SWEEPER_LOCAL_CPUS CPUs (3, more than this
    machine may have, so that the number can only come from the setting)."""
    import os

    code = ("import ray\nfrom sweeper.orchestration.connect import connect\n"
            "assert connect(None)\nprint(ray.cluster_resources()['CPU'])\nray.shutdown()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SWEEPER_LOCAL_CPUS": "3"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3.0"]


def test_two_trials_to_parquet_and_back_then_skipped(ray_local, tmp_path):
    study = Study(name="two", axes={"trainable": ["bn", "output"]}, **TINY)
    store = Store(tmp_path)
    lines = []
    summary = run_study(study, store, say=lines.append)
    assert summary.ok and summary.done == 2 and summary.skipped == 0
    trials = pd.read_parquet(tmp_path / "two" / "trials")
    assert sorted(trials["trainable"]) == ["bn", "output"]
    assert trials["status"].eq("done").all() and trials["test_acc"].between(0, 1).all()
    assert trials["node_id"].str.len().gt(0).all() and trials["cpus"].eq(1.0).all()
    bn = pd.read_parquet(tmp_path / "two" / "bn")
    assert set(bn["trial_id"]) == set(trials["trial_id"])
    assert {"layer", "channel", "gamma", "beta"} <= set(bn.columns)
    assert any("2 done" in line for line in lines)  # progress was reported

    again = run_study(study, store, say=lines.append)
    assert again.skipped == 2 and again.ran == 0
    assert len(pd.read_parquet(tmp_path / "two" / "trials")) == 2


def test_a_failing_trial_does_not_stop_the_sweep(ray_local, tmp_path):
    study = Study(name="fails", axes={"lr": [0.1, 1e30]}, **TINY)  # lr 1e30 diverges
    store = Store(tmp_path)
    summary = run_study(study, store, say=lambda _: None)
    assert summary.done == 1 and len(summary.failed) == 1 and not summary.ok
    (error,) = summary.failed.values()
    assert "TrialDiverged" in error
    # a re-run retries only the failed trial
    again = run_study(study, store, say=lambda _: None)
    assert again.skipped == 1 and again.ran == 1


def test_cli_run_exits_0_writes_store_and_figure(tmp_path):
    study = tmp_path / "tiny.py"
    study.write_text(textwrap.dedent("""
        from sweeper import Study
        study = Study(name="tiny", dataset="digits", axes={"trainable": ["bn", "all"]},
                      recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none"},
                      figures=["accuracy_vs_bn_params"])
    """))
    store = tmp_path / "store"
    env = {"RAY_AUTH_MODE": "disabled", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO)}  # this checkout's sweeper, whatever the venv has installed
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", str(study), "--store", str(store)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 ran and done, 0 failed" in r.stdout
    assert len(pd.read_parquet(store / "tiny" / "trials")) == 2
    assert (store / "tiny" / "figures" / "accuracy_vs_bn_params.png").exists()
    # the plan it ran, for figures and status drawn later without the study file
    plan = json.loads((store / "tiny" / "_plan.json").read_text())
    assert sorted(plan["ids"]) == sorted(pd.read_parquet(store / "tiny" / "trials")["trial_id"])


def test_a_trial_whose_process_dies_is_recorded_failed(ray_local, tmp_path):
    """A trial's worker killed outright on every attempt (as the OOM killer would): the driver
    records the trial as failed instead of losing it."""
    import threading

    import psutil

    raylet = ray_local._private.worker.global_worker.node.all_processes["raylet"][0].process.pid
    stop = threading.Event()

    def kill_trial_workers():  # only workers of this test session's own cluster
        while not stop.is_set():
            for child in psutil.Process(raylet).children(recursive=True):
                try:
                    if "ImplicitFunc" in " ".join(child.cmdline()) or "ImplicitFunc" in child.name():
                        child.kill()
                except psutil.Error:
                    pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_trial_workers, daemon=True)
    killer.start()
    study = Study(name="lost", axes={"trainable": ["bn"]}, dataset="digits",
                  recipe={"model": "resnet-8-4", "epochs": 3, "augment": "none", "seed": 1})
    try:
        summary = run_study(study, Store(tmp_path), max_failures=1, say=lambda _: None)
    finally:
        stop.set()
        killer.join()
    assert len(summary.failed) == 1 and summary.missing == 0
    (error,) = summary.failed.values()
    assert error.startswith("lost after all retries")
    trials = pd.read_parquet(tmp_path / "lost" / "trials")
    assert list(trials["status"]) == ["failed"]


def test_progress_callback_pickles_while_print_is_replaced(monkeypatch):
    """Tune pickles its callbacks into the experiment state. Once Ray's tqdm support has replaced
    builtins.print (it does so for the rest of the process), a callback holding the original print
    failed to pickle and every later sweep in that process died ("Can't pickle <built-in function
    print>"). The callback must pickle whatever `say` is."""
    import builtins
    import pickle

    from sweeper.orchestration.progress import progress_callback

    callback = progress_callback(3, 0, print, "test_acc", "max")
    monkeypatch.setattr(builtins, "print", lambda *a, **k: None)
    restored = pickle.loads(pickle.dumps(callback))
    assert type(restored).__name__ == "Progress"
