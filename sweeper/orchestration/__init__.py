"""Orchestration: the only package that imports Ray. It turns a study's missing trials into Ray Tune
trials, one `sweeper.trial.execute` each, and reports progress.

Why it looks like this:
- The store, not Tune's experiment state, is the record of what is done: a re-run (after a killed
  driver, a failed trial, a new seed) plans only what the store lacks. Tune's state under
  `<store>/<study>/_tune` serves only to resume a trial from its last checkpoint after a lost node.
- Actors are reused between trials (Tune's per-trial start-up cost is otherwise ~1.7 s here), and
  each trial sets torch's threads to its CPU count (oversubscription made two trials 5x slower).
- Only scalars go to Tune (it keeps statistics of every metric); tables go straight to Parquet.

One job per module:
  connect.py    join a cluster or start the local one; token authentication; address checks
  resources.py  what one trial asks for; waiting for a node that holds it (a cluster from zero)
  trainable.py  the Tune trainable around `sweeper.trial.execute`: epoch reports, checkpoints
  progress.py   the sweep's state (counts, running trials, ETA), its progress lines and its summary
  live.py       the live view of that state on a terminal (rich)
  checkpoints.py  one checkpoint per trial without Tune's forced experiment snapshots
  trackers.py   `--log` trackers as Tune's TensorBoard / MLflow / W&B callbacks
  sweep.py      `run_study`: the grid of a study's missing trials
  search.py     `run_search`: an Optuna search (optionally with ASHA) around one base trial
  submit.py     `sweeper submit`: a sweep as a Ray job on a remote cluster

Ray is imported inside the functions that use it, so that importing the package (as the CLI does
for its subcommands) costs nothing.
"""
from __future__ import annotations

import os

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines replace Tune's tables
# Ray's tqdm support replaces builtins.print for the rest of the process the first time Tune prints
# through it; a user's notebook or script should keep its own print.
os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
# Ctrl-C raises KeyboardInterrupt out of `tuner.fit` (one line from the CLI; Ray shuts down, trials
# end without a row and run again next time). Tune's own handler would instead stop every trial
# as if its scheduler had, and print a restore hint that does not apply to sweeper.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
