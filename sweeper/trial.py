"""One trial, end to end and Ray-free: run the experiment, record success or failure, and commit
its tables and its `trials` row to the store.

A trial's failure (an exception, a NaN loss, out of memory) never propagates: it becomes a row with
status `failed` and the error, so the sweep goes on and a re-run retries just that trial.
"""
from __future__ import annotations

import datetime as dt
import socket
import traceback
from dataclasses import dataclass
from typing import Any

from sweeper.experiment import TrialResult
from sweeper.experiments import EXPERIMENTS


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class TrialContext:
    """Where and how a trial runs; everything here is recorded, nothing here changes the result."""

    study: str
    store: Any  # sweeper.store.Store
    data_root: str | None = None
    code_version: str = ""
    cpus: float = 1.0
    gpus: float = 0.0
    node_id: str = ""
    early_stopping: bool = False  # a scheduler (a search's ASHA) may stop the trial before its end


def execute(spec, ctx: TrialContext, **run_kwargs) -> dict[str, Any]:
    """Run one trial and commit it to the store; returns the committed `trials` row. `run_kwargs`
    go to the experiment's run function (threads, callbacks, resume)."""
    experiment = EXPERIMENTS[spec.experiment]
    started = now()
    try:
        result = experiment.run(spec, ctx.data_root, **run_kwargs)
        status, error = "done", ""
    except KeyboardInterrupt:
        raise
    except SystemExit:
        # Ray Tune ends a trial its scheduler stops early (ASHA) by SystemExit in the trial's thread:
        # record that, then let Tune finish the stop. Without a scheduler the exit can only be the
        # sweep ending (Ctrl-C, SIGTERM, a stopped job): no row, so the next run runs it again.
        if ctx.early_stopping:
            _commit(spec, ctx, started, "stopped", "stopped early by the search's scheduler (ASHA)",
                    TrialResult({}, {}))
        raise
    except BaseException as e:  # noqa: BLE001 - a trial's failure is data, not a crash
        result = TrialResult({}, {})
        status = "failed"
        error = f"{type(e).__name__}: {e}".strip()
        error += "\n" + "".join(traceback.format_exception(e)[-3:])
    return _commit(spec, ctx, started, status, error, result)


def _commit(spec, ctx: TrialContext, started: str, status: str, error: str, result: TrialResult) -> dict[str, Any]:
    row = {
        "trial_id": spec.trial_id,
        "study": ctx.study,
        "experiment": spec.experiment,
        "status": status,
        "error": error,
        **spec.to_row(),
        **result.row,
        "cpus": float(ctx.cpus),
        "gpus": float(ctx.gpus),
        "node_id": ctx.node_id,
        "hostname": socket.gethostname(),
        "code_version": ctx.code_version,
        "started_at": started,
        "ended_at": now(),
    }
    ctx.store.commit_trial(ctx.study, spec, row, result.tables if status == "done" else {})
    return row
