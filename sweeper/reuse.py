"""Trials another study of the store has already trained: their results are copied, not trained again.

A trial is a pure function of its spec, and two studies often share trials: `sparsity`'s BN-only
trials are `depth_vs_width`'s BN-only trials with γ clamping and dead ReLUs measured as well (its
`--scale cpu` grid is the same 21 trials), and `norm_types`' BatchNorm trials at width 8 are
`depth_vs_width`'s. A trial of the study being run is taken from another study when that study has
it done with the same training (`Spec.training_id`: every field but those that only say what is
recorded) and recorded at least as much (`Spec.records_within`); the tables this study records are
copied under this study's trial id, and its `trials` row, the other's results under this trial's
spec, says where they came from in `reused_from` (`STUDY/TRIAL_ID` of the trial that trained).

Copies are committed like trials (tables first, the row last), so a copy killed half-way is made
again by the next run, and each study folder stays complete on its own: figures, `status`,
compaction and notebooks read one study without looking at another. `sweeper run --no-reuse`
trains every trial here instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from sweeper.errors import SweeperError
from sweeper.store import TRIALS, Store, trials_schema


@dataclass(frozen=True)
class Donor:
    """A done trial of another study whose results serve a trial of this one."""

    study: str
    trial_id: str
    row: dict[str, Any]  # its trials row
    tables: tuple[str, ...]  # the tables it wrote that the receiving trial records

    @property
    def origin(self) -> str:
        """Where the training ran: a donor that was itself a copy names its own origin."""
        return self.row.get("reused_from") or f"{self.study}/{self.trial_id}"


def serves(done, spec) -> bool:
    """Whether the done trial `done` (a spec) ran `spec`'s training and recorded all it records."""
    return done.training_id == spec.training_id and spec.records_within(done)


def find(store: Store, study: str, specs: list) -> dict[str, Donor]:
    """trial id -> the done trial of another study of `store` whose results are that spec's, for
    each of `specs` some other study has (the first study by name when several have it)."""
    if not specs:
        return {}
    spec_type, experiment = type(specs[0]), specs[0].experiment
    wanted: dict[str, list] = {}
    for s in specs:
        wanted.setdefault(s.training_id, []).append(s)
    found: dict[str, Donor] = {}
    for other in store.studies():
        if other == study or len(found) == len(specs):
            continue
        done = store.trial_status(other).done
        if not done:
            continue
        rows = store.read(other, TRIALS, trials=done)
        if "experiment" not in rows:
            continue
        for row in _records(rows[rows["experiment"] == experiment]):
            done_spec = _spec_of(spec_type, row)
            if done_spec is None or row.get("tables") is None:  # a row from before `tables`: what to copy is unknown
                continue
            for s in wanted.get(done_spec.training_id, ()):
                if s.trial_id not in found and serves(done_spec, s):
                    tables = tuple(t for t in row["tables"].split(",") if t and s.keeps_table(t))
                    found[s.trial_id] = Donor(other, row["trial_id"], row, tables)
    return found


def adopt(store: Store, study: str, specs: list, donors: dict[str, Donor],
          say: Callable[[str], None] = print) -> int:
    """Commit each donor's results as the trial of `specs` it serves, in `study`; returns how many."""
    by_id = {s.trial_id: s for s in specs}
    copied = 0
    for other in sorted({d.study for d in donors.values()}):
        mine = {tid: d for tid, d in donors.items() if d.study == other}
        frames = {t: _split(store.read(other, t, trials={d.trial_id for d in mine.values()}))
                  for t in sorted({t for d in mine.values() for t in d.tables})}
        for tid, donor in mine.items():
            spec = by_id[tid]
            tables = {t: frames[t].get(donor.trial_id, _empty(frames[t])) for t in donor.tables}
            store.commit_trial(study, spec, _row(spec, study, donor), tables)
            copied += 1
        say(f"{study}: {len(mine)} trials taken from {other}, which has them done with the same "
            "training (--no-reuse trains them here)")
    return copied


def _row(spec, study: str, donor: Donor) -> dict[str, Any]:
    """The donor's results and run under this trial's spec and id."""
    from sweeper.experiments import EXPERIMENTS

    names = set(trials_schema(type(spec), EXPERIMENTS[spec.experiment].columns).names)
    row = {k: v for k, v in donor.row.items() if k in names and k not in ("tables", "schema_version")}
    row.update(spec.to_row())
    row.update(trial_id=spec.trial_id, study=study, reused_from=donor.origin)
    return row


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values, a missing value as None (pandas gives NaN)."""
    out = []
    for row in frame.astype(object).to_dict("records"):
        out.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return out


def _spec_of(spec_type, row: dict[str, Any]):
    """The spec a stored row was run with, or None when the row does not rebuild to its own id
    (written by another version of a field's meaning): such a trial is never taken."""
    try:
        spec = spec_type.from_row(row)
    except (SweeperError, ValueError):
        return None
    return spec if spec.trial_id == row.get("trial_id") else None


def _split(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if "trial_id" not in frame:
        return {}
    return {str(tid): part.drop(columns="trial_id").reset_index(drop=True)
            for tid, part in frame.groupby("trial_id", sort=False, observed=True)}


def _empty(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """A table the donor listed but holds no rows of (e.g. `bn` of a network without norms)."""
    return next(iter(parts.values())).iloc[:0] if parts else pd.DataFrame()
