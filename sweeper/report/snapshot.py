"""A study's snapshot: per configuration (a trial spec without its seed) of its current plan, the
mean, spread and count over seeds of the study's metric, and the trial ids behind them. A night's
snapshot is `<report>/snapshot.parquet`; the next night compares against the newest earlier one."""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sweeper.report.layout import SNAPSHOT, list_reports, read_bytes, report_path
from sweeper.store import Store

DEFAULT_METRIC = ("test_acc", "max")  # for an experiment kind this code does not know
COLUMNS = ["study", "config_key", "config", "label", "metric", "mean", "std", "n", "trial_ids", "done_ids",
           "code_versions"]


def metric_of(experiment: str) -> tuple[str, str]:
    """The metric a study's report tracks, and which way is better: its experiment's own."""
    from sweeper.experiments import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        return DEFAULT_METRIC
    return EXPERIMENTS[experiment].metric, EXPERIMENTS[experiment].mode


def config_key(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def study_snapshot(study, store: Store) -> pd.DataFrame:
    """The study's per-configuration means now, for its current plan, from the store's trials."""
    specs = study.specs()
    metric, _ = metric_of(study.experiment)
    fields = [f for f in study.spec_type.field_types() if f != "seed"]
    configs: dict[str, dict] = {}
    members: dict[str, list[str]] = {}
    for spec in specs:
        row = spec.to_row()
        config = {f: row[f] for f in fields}
        key = config_key(config)
        configs.setdefault(key, config)
        members.setdefault(key, []).append(spec.trial_id)
    varying = [f for f in fields if len({json.dumps(c[f], default=str) for c in configs.values()}) > 1]
    labels = {}
    for key, config in configs.items():
        spec = next(s for s in specs if s.trial_id == members[key][0])
        model = getattr(spec, "model", None)
        shown = [f for f in varying if not (model and f in ("family", "depth", "width"))]
        text = " ".join(f"{f}={config[f]}" for f in shown)
        labels[key] = " ".join(p for p in (model, text) if p) or study.name
    # only the columns the means need (own files and compacted parts alike; empty when none)
    trials = store.read(study.name, "trials", columns=["trial_id", "status", metric, "code_version"])
    return snapshot_rows(study.name, metric, configs, labels, members, trials)


def snapshot_rows(study: str, metric: str, configs: dict[str, dict[str, Any]], labels: dict[str, str],
                  members: dict[str, list[str]], trials: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (config key -> spec values without the seed), the mean, spread and count
    of `metric` over its done trials (`trials`: the study's trials rows: trial_id, status, metric,
    code_version)."""
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "status", metric, "code_version"])
    done = trials[trials["status"] == "done"].set_index("trial_id")
    rows = []
    for key, config in configs.items():
        ids = sorted(members[key])
        have = [t for t in ids if t in done.index]
        values = (pd.to_numeric(done.loc[have, metric], errors="coerce").dropna()
                  if have and metric in done else pd.Series(dtype=float))
        versions = sorted({str(v) for v in done.loc[have, "code_version"]}) if have and "code_version" in done else []
        rows.append({
            "study": study,
            "config_key": key,
            "config": json.dumps(config, sort_keys=True, default=str),
            "label": labels.get(key, key),
            "metric": metric,
            "mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std(ddof=0)) if len(values) else math.nan,
            "n": int(len(values)),
            "trial_ids": ",".join(ids),
            "done_ids": ",".join(have),
            "code_versions": ",".join(versions),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def snapshot_bytes(frame: pd.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


def load_snapshot(store: Store, name: str) -> pd.DataFrame | None:
    """A report's snapshot, or None when that report never completed (no snapshot)."""
    data = read_bytes(store, report_path(store, name, SNAPSHOT))
    if data is None:
        return None
    try:
        return pq.read_table(pa.BufferReader(data)).to_pandas()
    except Exception:  # a damaged snapshot is treated as absent: the night before it is used
        return None


def previous_snapshots(store: Store, studies: list[str], before: str) -> dict[str, tuple[str, pd.DataFrame]]:
    """For each study, the newest complete report older than `before` that has it: name and rows."""
    found: dict[str, tuple[str, pd.DataFrame]] = {}
    for name in reversed([n for n in list_reports(store) if n < before]):
        if len(found) == len(studies):
            break
        snap = load_snapshot(store, name)
        if snap is None or snap.empty:
            continue
        for study in studies:
            if study not in found and (snap["study"] == study).any():
                found[study] = (name, snap[snap["study"] == study].reset_index(drop=True))
    return found
