"""Which stored trials belong together: a study's current plan, and what it leaves out.

A study folder keeps every trial it ever ran. After a user edits a recipe value (lr 0.05 -> 0.1),
the old trials stay in the store beside the new ones, and a figure that took every done trial would
average the two experiments silently. So figures and `sweeper status` look at the study's current
plan: the trial ids its study file expands to now (a search's sampled trials, whose ids are only
known once drawn, belong when every field but the searched ones matches). The rest is left out, and
said so in one line per kind: "left out 6 trials with lr=0.05 (the study file now says 0.1)".

The plan comes from the study file when one is given; otherwise from the last `sweeper run` (or
nightly), which records it as `<store>/<study>/_plan.json` as it begins (ids, the values each field
takes, the searched fields): a run stopped part way has still changed what the study means. A store
with neither draws every trial, as before.

`restricted(tables, ids)` is the view of a study's tables that figures draw from: every table cut
to the plan's trials, so no figure module needs to know about plans.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sweeper.analysis.join import among, columns

PLAN_FILE = "_plan.json"  # beside the study's tables; the leading "_" keeps it out of table listings


def canon(value) -> str:
    """A spec value as comparable text: the same for the study file's value and the value read back
    from Parquet (numpy scalars, NaN for an absent value, ints stored as floats)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, default=str)


def _canonical(column: pd.Series) -> pd.Series:
    """`canon` of each value of a column, computed once per distinct value (a big study's trials
    table has few distinct values per field)."""
    codes, uniques = pd.factorize(column.astype(object), use_na_sentinel=False)
    texts = np.array([canon(v) for v in uniques] + [None], dtype=object)
    return pd.Series(texts[codes], index=column.index)


def _shown(text: str) -> str:
    return text[1:-1] if text.startswith('"') and text.endswith('"') else text


def _order(text: str):
    """Numbers by value (8 before 14), then text."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if numeric else (1, 0, text)


def _choices(values: list[str], most: int = 4) -> str:
    """A field's planned values as a reader says them: `0.1`, `8 or 14`, `8, 14, 20, 32 or 5 more`."""
    shown = [_shown(v) for v in values]
    if len(shown) > most:
        return ", ".join(shown[:most]) + f" or {len(shown) - most} more"
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


@dataclass
class Plan:
    """A study's current plan: its trial ids, the values each spec field takes in it, and the
    fields a search samples (free)."""

    study: str
    ids: frozenset[str]
    values: dict[str, list[str]]  # field -> the canonical values the plan's trials have
    free: tuple[str, ...] = ()  # searched fields: any value belongs
    source: str = "the study file"  # said in messages: "the study file now says 0.1"

    @classmethod
    def of(cls, study, source: str = "the study file") -> "Plan":
        """The plan of a `sweeper.study.Study` (duck-typed: analysis imports no study loader)."""
        specs = study.specs()
        raw: dict[str, set] = {}
        for spec in specs:  # a row's values are scalars: collect the distinct ones, then canonicalise
            for f, v in spec.to_row().items():
                raw.setdefault(f, set()).add(v)
        values = {f: {canon(v) for v in vs} for f, vs in raw.items()}
        free = tuple(sorted(study.search.space)) if getattr(study, "search", None) is not None else ()
        return cls(study.name, frozenset(s.trial_id for s in specs), {f: sorted(v, key=_order) for f, v in values.items()},
                   free, source)

    def to_json(self) -> str:
        return json.dumps({"study": self.study, "ids": sorted(self.ids), "values": self.values,
                           "free": list(self.free)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "the last run's plan") -> "Plan":
        d = json.loads(text)
        return cls(d["study"], frozenset(d["ids"]), {f: list(v) for f, v in d["values"].items()},
                   tuple(d.get("free", ())), source)

    def fixed(self, columns: Iterable[str]) -> list[str]:
        """The fields a trial must match to belong (all but the searched ones), of those present."""
        return [f for f in self.values if f in set(columns) and f not in self.free]

    def members(self, trials: pd.DataFrame) -> pd.Series:
        """Per trials row, whether it belongs to the plan."""
        if trials.empty:
            return pd.Series(dtype=bool)
        inside = pd.Series(among(trials["trial_id"], self.ids), index=trials.index)
        if self.free:  # a search's samples: every field but the searched ones as planned
            sampled = pd.Series(True, index=trials.index)
            for f in self.fixed(trials.columns):
                sampled &= _canonical(trials[f]).isin(self.values[f])
            inside |= sampled
        return inside

    def differences(self, trials: pd.DataFrame) -> pd.DataFrame:
        """Per row, for each field where some row has a value the plan has not: that value (as
        text), else None."""
        out = {}
        for f in self.fixed(trials.columns):
            text = _canonical(trials[f])
            unplanned = ~text.isin(self.values[f])
            if unplanned.any():
                out[f] = text.where(unplanned, None)
        return pd.DataFrame(out, index=trials.index)

    def left_out(self, trials: pd.DataFrame) -> list[str]:
        """One line per kind of trial outside the plan, the most common first."""
        if trials.empty:
            return []
        outside = trials[~self.members(trials)]
        diff = self.differences(outside)
        counts: dict[tuple, int] = {}
        for values, n in (diff.value_counts(dropna=False).items() if len(diff.columns) else
                          [((), len(outside))] if len(outside) else []):
            values = values if isinstance(values, tuple) else (values,)
            key = tuple((f, v) for f, v in zip(diff.columns, values) if isinstance(v, str))
            counts[key] = counts.get(key, 0) + int(n)
        lines = []
        for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            trials_word = "trial" if n == 1 else "trials"
            if not key:
                lines.append(f"left out {n} {trials_word} not in the current plan (each of its values is in "
                             f"{self.source}, but not this combination)")
                continue
            had = "; ".join(f"{f}={_shown(v)}" for f, v in key)
            now = [_choices(self.values[f]) for f, _ in key]
            says = now[0] if len(key) == 1 else "; ".join(f"{f}={n_}" for (f, _), n_ in zip(key, now))
            where = "the study file now says" if self.source == "the study file" else f"{self.source} has"
            lines.append(f"left out {n} {trials_word} with {had} ({where} {says})")
        return lines


# -- the plan a run leaves in the store ------------------------------------------------------------
def record_plan(store, plan: Plan) -> None:
    """Keep the plan a run just ran beside its study's tables, for figures and status drawn later
    without the study file."""
    store.write_bytes(store.path(plan.study, PLAN_FILE), plan.to_json().encode())


def recorded_plan(store, study: str) -> Plan | None:
    """The plan the last run of `study` recorded, or None (none recorded, or unreadable)."""
    path = store.path(study, PLAN_FILE)
    try:
        if not store.exists(path):
            return None
        with store.fs.open_input_stream(path) as f:
            return Plan.from_json(f.read().decode())
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- selecting a study's trials ----------------------------------------------------------------------
@dataclass
class Cohort:
    """The trials a figure or a count uses, and what it left out (one line per kind)."""

    ids: frozenset[str] | None  # None: every trial (no plan known)
    left_out: list[str] = field(default_factory=list)
    plan: Plan | None = None


def select(trials: pd.DataFrame, plan: Plan | None, done_only: bool = True) -> Cohort:
    """The trials of `plan` among a study's `trials` rows (done ones, unless `done_only` is off)."""
    if plan is None or trials is None or trials.empty or "trial_id" not in trials:
        return Cohort(None, [], plan)
    if done_only and "status" in trials:
        trials = trials[trials["status"] == "done"]
    inside = plan.members(trials)
    return Cohort(frozenset(trials.loc[inside, "trial_id"]), plan.left_out(trials), plan)


def _keep(table: pd.DataFrame, ids: frozenset[str]) -> pd.DataFrame:
    if table is None or table.empty or "trial_id" not in table:
        return table
    mask = among(table["trial_id"], ids)  # one lookup per distinct id, not per row
    return table if mask.all() else table[mask].reset_index(drop=True)


class Restricted(Mapping):
    """A study's tables (a `LazyTables` or a dict) cut to the trials of a cohort; each cut once."""

    def __init__(self, tables: Mapping[str, pd.DataFrame], ids: frozenset[str]):
        self.tables, self.ids = tables, ids
        self._cache: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            self._cache[name] = _keep(self.tables[name], self.ids)
        return self._cache[name]

    def columns(self, name: str, cols: list[str], trials=None) -> pd.DataFrame:
        ids = self.ids if trials is None else self.ids & frozenset(trials)
        key = f"{name}:{','.join(cols)}:{hash(ids)}"
        if key not in self._cache:
            need = list(dict.fromkeys([*cols, "trial_id"]))
            read = getattr(self.tables, "columns", None)  # a store's tables read only the cohort's rows
            table = _keep(read(name, need, trials=ids) if read is not None else columns(self.tables, name, need), ids)
            self._cache[key] = table[[c for c in cols if c in table]] if "trial_id" not in cols else table
        return self._cache[key]

    def reduce(self, name: str, cols: list[str], fn, categorical=("trial_id",), trials=None):
        """`fn(batches)` over the cohort's rows only (sweeper.analysis.reduce)."""
        ids = self.ids if trials is None else self.ids & frozenset(trials)
        inner = getattr(self.tables, "reduce", None)
        if inner is not None:  # a store's tables: only the cohort's files and rows are read
            return inner(name, cols, lambda batches: fn(_kept_batches(batches, ids)), categorical=categorical,
                         trials=ids)
        import pyarrow as pa

        table = _keep(columns(self.tables, name, list(dict.fromkeys([*cols, "trial_id"]))), ids)
        return fn(iter(pa.Table.from_pandas(table[[c for c in cols if c in table]], preserve_index=False)
                       .to_batches(1 << 20)))

    def digested(self, name: str, digest_name: str, digest, fn, trials=None):
        """The cohort's part of LazyTables.digested (None where the tables cannot)."""
        ids = self.ids if trials is None else self.ids & frozenset(trials)
        inner = getattr(self.tables, "digested", None)
        if inner is None:
            return None
        return inner(name, digest_name, digest, lambda batches: fn(_kept_batches(batches, ids)), trials=ids)

    def __contains__(self, name) -> bool:
        return name in self.tables

    def __iter__(self):
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)


def restricted(tables: Mapping[str, pd.DataFrame], cohort: Cohort) -> Mapping[str, pd.DataFrame]:
    return tables if cohort.ids is None else Restricted(tables, cohort.ids)


def study_cohort(store, study: str, tables: Mapping[str, pd.DataFrame], plan: Plan | None = None) -> Cohort:
    """The done trials of `study` that its plan holds: `plan` (from a study file) or, without one,
    the plan its last run recorded; every done trial when neither is known."""
    plan = plan or recorded_plan(store, study)
    if plan is None or "trials" not in tables:
        return Cohort(None, [], plan)
    return select(tables["trials"], plan)


def plan_counts(trials: pd.DataFrame | None, done: set[str], failed: Iterable[str], plan: Plan) -> dict:
    """What `sweeper status` counts of one study under a plan: its done, failed and missing trials,
    the stored trials outside it (`other`) and one line per kind of those (`left_out`). `trials`:
    the study's rows (trial_id and the plan's fields), `done`/`failed`: the store's verdicts."""
    failed = set(failed)
    trials = pd.DataFrame(columns=["trial_id"]) if trials is None else trials
    stored = trials[among(trials["trial_id"], done | failed)] if not trials.empty else trials
    inside = set(stored.loc[plan.members(stored), "trial_id"]) if not stored.empty else set()
    return {"done": len(done & inside), "failed": len(failed & inside),
            "missing": len(plan.ids - done - failed),
            "other": len((done | failed) - inside), "left_out": plan.left_out(stored) if not stored.empty else []}


def _kept_batches(batches, ids: frozenset[str]):
    """Batches cut to the rows of `ids` (a store read with `trials=` holds only those already)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(sorted(ids), pa.string())
    for batch in batches:
        column = batch.column("trial_id")
        if pa.types.is_dictionary(column.type):  # decided per distinct id, not per row
            known = pc.is_in(column.dictionary, value_set=wanted)
            if pc.all(known).as_py() and column.null_count == 0:
                yield batch
                continue
            keep = pc.fill_null(known.take(column.indices), False)
        else:
            keep = pc.fill_null(pc.is_in(column, value_set=wanted), False)
        yield batch if pc.all(keep).as_py() else batch.filter(keep)
