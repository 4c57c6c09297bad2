"""A study as the store holds it, for a report: every trial of its plan (or, with no study file, every
trial the store has) with its status, its axis values and its metric; and the blocks that show it:
status counts, one table per axis (mean ± std of the metric over the done trials at each value),
the failed trials with their errors, and figures. `sweeper report` puts them on a page of their
own (`sweeper.report.page`); the nightly's report shows the same per-axis tables and failed-trial
table in each study's section (`sweeper.report.night`)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sweeper.report.render import Block, fmt_metric
from sweeper.report.snapshot import config_key, metric_of, snapshot_rows, study_snapshot
from sweeper.store import Store

STATUSES = ("done", "failed", "stopped", "pending")


@dataclass
class Overview:
    """One row per trial (`trials`: trial_id, status, the axes' values, the metric, error)."""

    study: str
    experiment: str
    metric: str
    mode: str
    axes: list[str]  # the spec fields the trials vary over (the seed apart), in the study's order
    trials: pd.DataFrame
    planned: bool  # True: from a study file (pending trials known); False: only what the store has
    snapshot: pd.DataFrame | None = None  # per configuration, mean over seeds (sweeper.report.snapshot)
    damaged: list[str] = field(default_factory=list)  # done rows whose tables are damaged: they rerun

    def count(self, status: str) -> int:
        return int((self.trials["status"] == status).sum()) if len(self.trials) else 0


def _declared_axes(study) -> list[str]:
    """The fields a study's grids name (a joint axis names several), the seed last, as `plan` lists them."""
    names: list[str] = []
    for grid in study.grids():
        for name, values in grid.items():
            keys = list(values[0]) if isinstance(values[0], dict) else [name]
            names += [k for k in keys if k not in names]
    return names


def _axis_value(spec, row: dict[str, Any], axis: str) -> Any:
    value = row.get(axis, getattr(spec, axis, None))
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _statuses(store: Store, name: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    st = store.trial_status(name)
    status = {**{t: "failed" for t in st.failed}, **{t: "stopped" for t in st.stopped},
              **{t: "done" for t in st.done}}
    return status, dict(st.failed), sorted(st.damaged)


def _stored(store: Store, name: str) -> pd.DataFrame:
    trials = store.read(name, "trials")  # own files and compacted parts alike (sweeper.segments)
    return trials if "trial_id" in trials else pd.DataFrame(columns=["trial_id"])


def of_study(study, store: Store) -> Overview:
    """Every trial of the study file's plan, with what the store holds of it (pending: no row)."""
    metric, mode = metric_of(study.experiment)
    specs = study.specs()
    status, errors, damaged = _statuses(store, study.name)
    stored = _stored(store, study.name).drop_duplicates("trial_id").set_index("trial_id")
    axes = [a for a in _declared_axes(study) if a != "seed"]
    rows = []
    for spec in specs:
        row = spec.to_row()
        tid = spec.trial_id
        value = stored.at[tid, metric] if tid in stored.index and metric in stored else math.nan
        rows.append({"trial_id": tid, "status": status.get(tid, "pending"),
                     **{a: _axis_value(spec, row, a) for a in axes}, "seed": row.get("seed"),
                     metric: _number(value) if status.get(tid) == "done" else math.nan,
                     "error": errors.get(tid, "")})
    frame = pd.DataFrame(rows, columns=["trial_id", "status", *axes, "seed", metric, "error"])
    return Overview(study.name, study.experiment, metric, mode, axes, frame, True, study_snapshot(study, store),
                    damaged)


def of_store(store: Store, name: str) -> Overview:
    """A study known only by its name: the trials the store has, the axes those trials vary over."""
    from sweeper.experiments import EXPERIMENTS

    stored = _stored(store, name).drop_duplicates("trial_id")
    kinds = sorted({str(k) for k in stored.get("experiment", pd.Series(dtype=str)).dropna()})
    experiment = kinds[0] if kinds else "train"
    metric, mode = metric_of(experiment)
    fields = list(EXPERIMENTS[experiment].spec_type.field_types()) if experiment in EXPERIMENTS else []
    if "model" in stored and "model" not in fields:
        fields.insert(0, "model")
    status, errors, damaged = _statuses(store, name)

    def key(v: Any) -> str:
        return json.dumps(v.tolist() if hasattr(v, "tolist") else v, default=str)

    axes = [f for f in fields if f in stored and f != "seed" and stored[f].map(key).nunique() > 1]
    if "model" in axes:  # the model names its family, depth and width: one axis, not four
        axes = [a for a in axes if a not in ("family", "depth", "width")]
    frame = pd.DataFrame({
        "trial_id": stored["trial_id"],
        "status": [status.get(t, "pending") for t in stored["trial_id"]],
        **{a: stored[a].map(lambda v: json.dumps(v.tolist()) if hasattr(v, "tolist") else v) for a in axes},
        "seed": stored["seed"] if "seed" in stored else None,
        metric: [_number(v) if status.get(t) == "done" else math.nan
                 for t, v in zip(stored["trial_id"], stored.get(metric, [math.nan] * len(stored)))],
        "error": [errors.get(t, "") for t in stored["trial_id"]],
    }, columns=["trial_id", "status", *axes, "seed", metric, "error"])
    snapshot = None
    if len(stored) and fields:
        configs, members, labels = {}, {}, {}
        for _, r in stored.iterrows():
            config = {f: (r[f].tolist() if hasattr(r[f], "tolist") else r[f]) for f in fields
                      if f in stored and f != "seed"}
            k = config_key(config)
            configs.setdefault(k, config)
            members.setdefault(k, []).append(r["trial_id"])
            labels[k] = " ".join(f"{a}={config[a]}" for a in axes) or name
        snapshot = snapshot_rows(name, metric, configs, labels, members, stored)
    return Overview(name, experiment, metric, mode, axes, frame, False, snapshot, damaged)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# -- blocks --------------------------------------------------------------------------------------
def status_blocks(ov: Overview) -> list[Block]:
    counts = [ov.count(s) for s in STATUSES]
    header = ["trials", *STATUSES] if ov.planned else ["trials", *STATUSES[:3]]
    row = [len(ov.trials), *counts] if ov.planned else [len(ov.trials), *counts[:3]]
    blocks: list[Block] = [("h2", "Status"), ("table", header, [row])]
    notes = []
    if not ov.planned:
        notes.append("No study file given: these are the trials the store has; which are still to run is not known.")
    if ov.damaged:
        notes.append(f"{len(ov.damaged)} done trial(s) have a damaged table and will run again: "
                     + ", ".join(f"`{t}`" for t in ov.damaged[:10]))
    return blocks + [("p", n) for n in notes]


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if not len(values):
        return "—"
    std = float(values.std(ddof=0))
    return f"{fmt_metric(float(values.mean()))} ± {fmt_metric(std)}"


def axis_blocks(ov: Overview, level: str = "h2") -> list[Block]:
    """Per axis: at each of its values, how many trials are done, failed and pending, and the
    mean ± std of the metric over the done ones (over seeds and every other axis's values)."""
    if not len(ov.trials) or not ov.axes:
        return []
    blocks: list[Block] = [("h2" if level == "h2" else "h3", f"Per axis ({ov.metric}, mean ± std over done trials)")]
    shown = [s for s in STATUSES if ov.planned or s != "pending"]
    for axis in ov.axes:
        rows = []
        for value, group in ov.trials.groupby(axis, sort=False, dropna=False):
            counts = [int((group["status"] == s).sum()) for s in shown]
            rows.append([value, *counts, _mean_std(group[ov.metric]), int(group[ov.metric].notna().sum())])
        blocks += [("h3", axis) if level == "h2" else ("p", f"`{axis}`"),  # headings take no inline markup
                   ("table", [axis, *shown, f"{ov.metric} mean ± std", "n"], rows)]
    return blocks


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def failed_table(failed: dict[str, str], labels: dict[str, str] | None = None, limit: int = 200) -> list[Block]:
    """The failed trials (trial id -> error) as a table: id, what it was (`labels`), the error's first line."""
    if not failed:
        return []
    items = sorted(failed.items())
    header = ["failed trial", *(["trial"] if labels else []), "error"]
    rows = [[f"`{t}`", *([labels.get(t, "")] if labels else []), _first_line(e)] for t, e in items[:limit]]
    blocks: list[Block] = [("table", header, rows)]
    if len(items) > limit:
        blocks.append(("p", f"... and {len(items) - limit} more failed trials."))
    return blocks


def labels(ov: Overview, ids) -> dict[str, str]:
    """What each of these trials is: its axis values and seed (`weight_init=... trainable=bn seed=0`)."""
    rows = ov.trials[ov.trials["trial_id"].isin(list(ids))]
    return {r["trial_id"]: " ".join(f"{a}={r[a]}" for a in [*ov.axes, "seed"]) for _, r in rows.iterrows()}


def failed_blocks(ov: Overview) -> list[Block]:
    failed = ov.trials[ov.trials["status"] == "failed"]
    if not len(failed):
        return [("h2", "Failed trials"), ("p", "None.")]
    errors = dict(zip(failed["trial_id"], failed["error"]))
    return [("h2", f"Failed trials ({len(failed)})")] + failed_table(errors, labels(ov, errors))
