"""Reliability, stopping from outside (issue 20): SIGTERM, Ctrl-C and a closed pipe end a command
with one line (or, for the pipe, quietly), and never label a trial falsely.

These need real processes (signals land on a driver running a real local Ray cluster)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sweeper.experiments.train.spec import TrainSpec
from sweeper.store import Store

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
STUDY = """
from sweeper import Study
study = Study(name="slow", dataset="digits", axes={"seed": [0, 1, 2, 3]},
              recipe={"model": "resnet-8-4", "epochs": 40, "augment": "none", "batch_size": 32})
"""


def as_from_a_terminal() -> None:
    """Ctrl-C at its default in the sweep, as in a terminal. A suite started in the background by a
    non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python keeps an inherited SIG_IGN:
    the sweep then rightly ignored the test's SIGINT and ran to the end (CI failed that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sweep(study: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeper.cli", "run", str(study), "--store", str(store),
                             "--no-figures"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True, preexec_fn=as_from_a_terminal)


def wait_for_line(proc: subprocess.Popen, needle: str, seconds: float = 240) -> str:
    seen = ""
    deadline = time.time() + seconds
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if needle in line or (not line and proc.poll() is not None):
            return seen
    return seen


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything the driver left (Ray's processes)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.parametrize("signum,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                              (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_sweep_says_one_line_and_labels_no_trial_falsely(tmp_path, signum, code, word):
    study, store = tmp_path / "slow.py", tmp_path / "store"
    study.write_text(STUDY)
    proc = start_sweep(study, store)
    try:
        seen = wait_for_line(proc, "running 4 trials")
        assert "running 4 trials" in seen, seen + proc.stderr.read()
        time.sleep(4)  # trials are mid-epoch
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"sweeper: {word}; finished trials are in the store, run again to resume"], err
    assert "SIGTERM received" not in err + out and "Tuner.restore" not in err + out  # no Ray stack, no Tune hint
    trials = store / "slow" / "trials"
    if trials.exists():  # any trial that finished before the signal is done; none is "stopped"
        assert set(pd.read_parquet(trials)["status"]) <= {"done"}


UNWIND_TWICE_SIGNALLED = """
import os, signal, time
from sweeper import interrupt
interrupt.on_sigterm_interrupt()
try:
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # a batch scheduler's SIGTERM ...
        time.sleep(30)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # ... then the job script's own, during the cleanup
        time.sleep(0.5)
        print("cleanup finished", flush=True)
except interrupt.Terminated:
    print("terminated once", flush=True)
"""


def test_a_second_sigterm_does_not_cut_the_unwinding_short():
    """The second SIGTERM used to raise inside the first one's cleanup (cutting `ray.shutdown()`
    short, after which the driver waited 60 s at exit on a dead GCS: a SLURM job overran KillWait)."""
    r = subprocess.run([sys.executable, "-c", UNWIND_TWICE_SIGNALLED], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.split("\n")[:2] == ["cleanup finished", "terminated once"], r.stdout + r.stderr


def test_status_json_into_a_closed_pipe_exits_quietly(tmp_path):
    """`sweeper status STORE --json | head -c1`: the reader goes away before the output is written."""
    store = Store(tmp_path)
    for seed in range(200):  # enough output to fill any pipe buffer
        s = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "epochs": 1, "seed": seed})
        store.commit_trial(f"study-{seed % 50}", s, {"trial_id": s.trial_id, "study": "st", "experiment": "train",
                                                      "status": "done", "error": "", **s.to_row()}, {})
    read, write = os.pipe()
    os.close(read)
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "status", str(tmp_path), "--json"], stdout=write,
                       stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    os.close(write)
    assert r.returncode == 141 and r.stderr == "", r.stderr
