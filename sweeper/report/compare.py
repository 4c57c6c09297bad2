"""Tonight's snapshot of a study against the previous one: which configurations regressed or
improved beyond the tolerance, which trials and configurations are new, which are gone."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sweeper.report.snapshot import DEFAULT_METRIC


@dataclass
class Moved:
    label: str
    before: float
    after: float
    n: int
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (before, after)

    @property
    def delta(self) -> float:
        return self.after - self.before

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "before": self.before, "after": self.after, "delta": self.delta,
                "n": self.n, "changed": {k: list(v) for k, v in self.changed.items()}}


@dataclass
class Comparison:
    previous: str | None  # the report compared against (None: first night for this study)
    metric: str
    tolerance: float
    new_trials: list[str] = field(default_factory=list)
    regressions: list[Moved] = field(default_factory=list)
    improvements: list[Moved] = field(default_factory=list)
    within: list[Moved] = field(default_factory=list)  # compared, moved no more than tolerance
    new_configs: list[str] = field(default_factory=list)  # labels
    retired_configs: list[str] = field(default_factory=list)
    no_result: list[str] = field(default_factory=list)  # configurations with no done trial tonight

    @property
    def changed(self) -> bool:
        return bool(self.new_trials or self.regressions or self.improvements or self.new_configs
                    or self.retired_configs)

    def to_json(self) -> dict[str, Any]:
        return {
            "previous": self.previous, "metric": self.metric, "tolerance": self.tolerance,
            "changed": self.changed, "new_trials": self.new_trials,
            "regressions": [m.to_json() for m in self.regressions],
            "improvements": [m.to_json() for m in self.improvements],
            "within_tolerance": len(self.within),
            "largest_move_within": max((abs(m.delta) for m in self.within), default=0.0),
            "new_configs": self.new_configs, "retired_configs": self.retired_configs,
            "no_result": self.no_result,
        }


_EPS = 1e-9  # a move of exactly the tolerance is within it, whatever the float rounding


def _ids(cell: Any) -> set[str]:
    return {t for t in str(cell or "").split(",") if t}


def compare(previous: tuple[str, pd.DataFrame] | None, tonight: pd.DataFrame, tolerance: float,
            direction: str = "max") -> Comparison:
    """Tonight's snapshot of one study against the previous one.

    Configurations are matched by their full spec (every spec field but the seed). One that no
    longer matches (a recipe value of the study changed, say lr) is paired with the previous
    configuration at the same point of the study's grid (equal on every field that varies across
    tonight's configurations), when exactly one is there: the report then names the fields that
    changed, and its accuracy is compared like any other."""
    metric = str(tonight["metric"].iloc[0]) if len(tonight) else DEFAULT_METRIC[0]
    out = Comparison(previous[0] if previous else None, metric, tolerance)
    now_done = set().union(*(_ids(c) for c in tonight["done_ids"])) if len(tonight) else set()
    out.no_result = [r.label for r in tonight.itertuples() if not r.n]
    if previous is None:
        out.new_trials = sorted(now_done)
        out.new_configs = [r.label for r in tonight.itertuples() if r.n]
        return out
    before = previous[1]
    before_done = set().union(*(_ids(c) for c in before["done_ids"])) if len(before) else set()
    out.new_trials = sorted(now_done - before_done)

    now_cfg = {r.config_key: json.loads(r.config) for r in tonight.itertuples()}
    old_cfg = {r.config_key: json.loads(r.config) for r in before.itertuples()}
    pairs = [(k, k) for k in now_cfg if k in old_cfg]
    un_now = [k for k in now_cfg if k not in old_cfg]
    un_old = [k for k in old_cfg if k not in now_cfg]
    fields = sorted(set().union(*now_cfg.values())) if now_cfg else []
    varying = [f for f in fields if len({json.dumps(c.get(f), default=str) for c in now_cfg.values()}) > 1]

    def point(config: dict[str, Any]) -> str:
        return json.dumps([config.get(f) for f in varying], default=str)

    for k in list(un_now):
        same = [o for o in un_old if point(old_cfg[o]) == point(now_cfg[k])]
        rivals = [n for n in un_now if point(now_cfg[n]) == point(now_cfg[k])]
        if len(same) == 1 and len(rivals) == 1:
            pairs.append((k, same[0]))
            un_now.remove(k)
            un_old.remove(same[0])

    now_rows = tonight.set_index("config_key")
    old_rows = before.set_index("config_key")
    for k_now, k_old in pairs:
        a, b = now_rows.loc[k_now], old_rows.loc[k_old]
        if not a["n"] or not b["n"] or math.isnan(a["mean"]) or math.isnan(b["mean"]):
            continue
        changed = {f: (old_cfg[k_old].get(f), now_cfg[k_now].get(f))
                   for f in sorted(set(old_cfg[k_old]) | set(now_cfg[k_now]))
                   if old_cfg[k_old].get(f) != now_cfg[k_now].get(f)}
        moved = Moved(str(a["label"]), float(b["mean"]), float(a["mean"]), int(a["n"]), changed)
        worse = -moved.delta if direction == "max" else moved.delta
        if worse > tolerance + _EPS:
            out.regressions.append(moved)
        elif -worse > tolerance + _EPS:
            out.improvements.append(moved)
        else:
            out.within.append(moved)
    out.new_configs = [str(now_rows.loc[k, "label"]) for k in un_now if now_rows.loc[k, "n"]]
    out.retired_configs = [str(old_rows.loc[k, "label"]) for k in un_old]
    out.regressions.sort(key=lambda m: m.delta if direction == "max" else -m.delta)
    return out
