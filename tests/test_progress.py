"""Watching a sweep: the line-per-event mode (off a terminal), the live view (rich, on a terminal),
the ETA, and Tune's "Experiment state snapshotting ..." paragraph gone at its cause."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweeper.orchestration.progress import Running, SweepState

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT_WARNING = "Experiment state snapshotting has been triggered multiple times"

# Several short trials that checkpoint every epoch (`--checkpoint-seconds 0`): what made Tune force
# an experiment snapshot after every trial checkpoint, and warn about it, under num_to_keep=1.
SHORT = textwrap.dedent("""
    from sweeper import Study

    study = Study(name="short", dataset="digits", axes={"seed": [0, 1, 2, 3]},
                  recipe={"model": "resnet-8-4", "epochs": 5, "batch_size": 256, "augment": "none",
                          "train_size": 256, "test_size": 128},
                  measure=[])
""")


def test_line_mode_off_a_terminal_and_no_snapshot_paragraph(tmp_path):
    """Through the CLI with stdout a pipe (as under CI, cron, `ray job`): --progress auto is the
    line mode, one line per finished trial; Tune's snapshot paragraph (19 times in this run before
    the fix) does not appear, and each trial keeps one checkpoint, its newest."""
    (tmp_path / "short.py").write_text(SHORT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", "short.py", "--store", "store",
                          "--checkpoint-seconds", "0", "--no-figures"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert SNAPSHOT_WARNING not in out
    lines = [line for line in run.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 4  # one per finished trial, nothing redrawn
    pattern = re.compile(r"\[(\d)/4\] (\d) done, (\d) running, (\d) pending, 0 failed · best test_acc "
                         r"[01]\.\d{4} \([0-9a-f]{8} resnet-8-4.*\)  <- [0-9a-f]{8} resnet-8-4.*: test_acc [01]\.\d{4}$")
    for i, line in enumerate(lines, 1):
        m = pattern.match(line)
        assert m, line
        finished, done, running, pending = map(int, m.groups())
        assert finished == done == i and running + pending == 4 - i
    assert "\x1b[" not in run.stdout  # no terminal control codes in a log
    # every trial checkpointed at each of its first 4 epochs; only the newest is left
    trial_dirs = [d for d in (tmp_path / "store" / "short" / "_tune").glob("sweep-*/*") if d.is_dir()]
    assert len(trial_dirs) == 4
    assert all([c.name for c in d.glob("checkpoint_*")] == ["checkpoint_000003"] for d in trial_dirs)


def test_tunes_forced_snapshots_are_the_cause(ray_local, tmp_path):
    """The paragraph's cause, shown on a bare Tune run: trials checkpointing each step under
    `CheckpointConfig(num_to_keep=1)` force a snapshot each time, and Tune warns; sweeper's
    checkpoint settings (keep all, delete the older one from a callback) keep one checkpoint
    per trial without a forced snapshot or the warning."""
    from ray import tune

    from sweeper.orchestration.checkpoints import checkpoint_config, keep_newest_checkpoint

    def steps(config):
        import tempfile

        for i in range(8):
            with tempfile.TemporaryDirectory() as d:
                Path(d, "state").write_text(str(i))
                tune.report({"i": i}, checkpoint=tune.Checkpoint.from_directory(d))

    def fit(name, checkpoints, callbacks):
        said = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())
        logger = logging.getLogger("ray.tune.execution.experiment_state")
        logger.addHandler(handler)
        try:
            tune.Tuner(steps, param_space={"x": tune.grid_search([0, 1, 2, 3])},
                       tune_config=tune.TuneConfig(reuse_actors=True),  # one trial process, not four
                       run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                                 checkpoint_config=checkpoints, callbacks=callbacks)).fit()
        finally:
            logger.removeHandler(handler)
        kept = sorted(len(list(d.glob("checkpoint_*"))) for d in (tmp_path / name).iterdir() if d.is_dir())
        return sum(SNAPSHOT_WARNING in m for m in said), kept

    warned, kept = fit("before", tune.CheckpointConfig(num_to_keep=1), [])
    assert warned >= 1 and kept == [1, 1, 1, 1]
    warned, kept = fit("after", checkpoint_config(), [keep_newest_checkpoint()])
    assert warned == 0 and kept == [1, 1, 1, 1]


def test_live_view_of_a_real_run(ray_local, tmp_path):
    """The live view drawn on a fake terminal over a real small sweep: counts, the running trials
    with their epoch and accuracy, elapsed time and an ETA once a trial has finished."""
    from rich.console import Console

    from sweeper.orchestration.live import LiveView
    from sweeper.orchestration.sweep import run_study
    from sweeper.store import Store
    from sweeper.study import Study

    study = Study(name="live", dataset="digits", axes={"seed": [0, 1, 2]}, measure=[],
                  recipe={"model": "resnet-8-4", "epochs": 4, "batch_size": 256, "augment": "none",
                          "train_size": 256, "test_size": 128})
    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=140, color_system=None)
    view = LiveView("live", console=console, refresh_per_second=20)
    summary = run_study(study, Store(tmp_path / "store"), say=view.say, view=view, checkpoint_seconds=0)
    assert summary.ok and summary.done == 3
    text = console.export_text()
    assert "running trial" in text and "epoch" in text and "test_acc" in text
    assert re.search(r"\d done · [12] running · \d pending · 0 failed", text)  # while trials ran
    assert re.search(r"^\s*[0-9a-f]{8} resnet-8-4\S*( seed=\d)?\s+[1-4]/4\s+[01]\.\d{4}\s+\d+:\d\d", text, re.M)
    assert re.search(r"elapsed \d+:\d\d · ETA \?", text)  # before any trial finished
    assert re.search(r"elapsed \d+:\d\d · ETA \d+:\d\d", text)  # after
    assert "3/3" in text and "3 done · 0 running · 0 pending · 0 failed" in text  # the last frame
    assert "[3/3] 3 done" in text  # finished trials' lines above the view
    assert console.file.getvalue().count("\x1b[") > 0  # drawn in place on a terminal


def test_eta_from_finished_trials():
    state = SweepState(total=6, skipped=0, metric="test_acc", mode="max", started=0.0)
    state.running = {"a": Running("a", started=0.0), "b": Running("b", started=0.0)}
    state.most_running = 2
    assert state.eta(now=1.0) is None  # nothing finished: no estimate
    state.finish("a", True, "a", 0.5)
    state.seconds[-1] = 10.0  # trial a took 10 s
    # at t=10: b has run its ~10 s (none left); 4 pending x 10 s, over the 2 slots seen
    assert state.eta(now=10.0) == pytest.approx(20.0)
    assert state.eta(now=4.0) == pytest.approx((4 * 10 + 6) / 2)  # b has ~6 s left
    assert state.pending == 4 and state.done == 1 and state.best == (0.5, "a")
    state.finish("b", False, "b")
    assert state.failed == 1 and state.done == 1 and state.pending == 4



def test_a_lost_trial_waiting_to_retry_is_pending_not_running():
    """Tune's on_trial_recover (a worker or node lost, the trial queued again): the trial leaves the
    running count until it starts again, keeps its first start for the ETA, and finishes once.
    (Two trials on two slots once read "3 running" after a lost worker.)"""
    from types import SimpleNamespace

    from sweeper.orchestration.progress import progress_callback

    lines = []
    cb = progress_callback(total=2, skipped=0, say=lines.append, metric="test_acc", mode="max")
    trial = {k: SimpleNamespace(trial_id=k, config={}, last_result={"status": "done", "test_acc": 0.5})
             for k in ("a", "b")}
    cb.on_trial_start(0, [], trial["a"])
    cb.on_trial_start(0, [], trial["b"])
    first = cb.state.running["a"].started
    cb.on_trial_recover(0, [], trial["a"])
    assert list(cb.state.running) == ["b"] and cb.state.pending == 1
    cb.on_trial_start(0, [], trial["a"])  # runs again
    assert len(cb.state.running) == 2 and cb.state.running["a"].started == first
    cb.on_trial_complete(0, [], trial["a"])
    cb.on_trial_complete(0, [], trial["b"])
    assert cb.state.done == 2 and not cb.state.running and not cb.state.retrying
    assert lines[-1].startswith("[2/2] 2 done, 0 running, 0 pending, 0 failed")

def test_auto_is_live_only_on_a_terminal():
    from sweeper.orchestration.live import choose, clock

    class TTY(io.StringIO):
        def isatty(self):
            return True

    assert choose("auto", io.StringIO()) == "lines" and choose("auto", TTY()) == "live"
    assert choose("live", io.StringIO()) == "live" and choose("lines", TTY()) == "lines"
    assert clock(None) == "?" and clock(65) == "1:05" and clock(3725) == "1:02:05"
