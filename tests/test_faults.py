"""Fault tolerance: a killed driver, a lost node, two sweeps on one store at once."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from sweeper.analysis.cohort import recorded_plan
from sweeper.store import Store

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}

STUDY = """
from sweeper import Study
study = Study(name="faults", dataset="digits", axes={"seed": [0, 1, 2, 3, 4]},
              recipe={"model": "resnet-8-4", "epochs": %(epochs)d, "augment": "none", "batch_size": 32})
"""


def start_sweep(study, store):
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "run", str(study), "--store", str(store), "--no-figures"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True,
    )


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's Ray processes (agents) go with it
    except ProcessLookupError:
        pass
    proc.wait()


def committed(store):
    folder = store / "faults" / "trials"
    return sorted(p.name for p in folder.glob("*.parquet")) if folder.exists() else []


def test_sigkill_driver_then_rerun_runs_only_missing(tmp_path):
    study = tmp_path / "faults.py"
    study.write_text(STUDY % {"epochs": 2})
    store = tmp_path / "store"
    proc = start_sweep(study, store)
    deadline = time.time() + 240
    while len(committed(store)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-sweep
    kill_group(proc)
    first = committed(store)
    assert 1 <= len(first) < 5, "the kill should land mid-sweep"
    # The run recorded its plan as it began: figures drawn before the rerun restrict to this plan's
    # trials, not to what an earlier (or no) run of the study recorded.
    plan = recorded_plan(Store(store), "faults")
    assert plan is not None and len(plan.ids) == 5 and plan.values["epochs"] == ["2"]

    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", str(study), "--store", str(store), "--no-figures"],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    # A trial already inside its commit when the driver died may still land after the kill (a
    # worker finishes its write before it notices): it counts as done, so at least `first` are.
    skipped = int(re.search(r"(\d+) of 5 trials already in the store; skipped", r.stdout).group(1))
    assert len(first) <= skipped < 5
    assert f"running {5 - skipped} trials" in r.stdout  # only the missing ones ran
    trials = pd.read_parquet(store / "faults" / "trials")
    assert len(trials) == 5 and trials["trial_id"].is_unique and trials["status"].eq("done").all()
    bn = pd.read_parquet(store / "faults" / "bn")
    assert bn.groupby("trial_id").size().nunique() == 1  # each trial's channels once, none doubled
    hidden = [p for p in (store / "faults").rglob(".*") if p.is_file()]
    assert not [p for p in hidden if "trials" in p.parts or "bn" in p.parts and not p.name.endswith(".tmp")]


def test_two_sweeps_on_one_store_neither_collide_nor_duplicate(tmp_path):
    study = tmp_path / "faults.py"
    study.write_text(STUDY % {"epochs": 1})
    store = tmp_path / "store"
    a, b = start_sweep(study, store), start_sweep(study, store)
    out_a, _ = a.communicate(timeout=600)
    out_b, _ = b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    trials = pd.read_parquet(store / "faults" / "trials")
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert len(pd.read_parquet(store / "faults" / "bn")) == 5 * trials["bn_params"].iloc[0] // 2
