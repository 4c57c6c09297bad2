"""Do two stores that ran the same trials agree? (e.g. a laptop's CPU and a GPU machine.)

    .venv/bin/python benchmarks/store_agreement.py STORE_A STORE_B --study depth_vs_width-cpu [--metric test_acc]

Trials are matched by trial id: the same spec on both sides, wherever it ran (`device`, `gpus` and
`code_version` are recorded, not part of the id). Prints, in points (metric x 100): B minus A over
all matched trials and by trained subset, then one row per (network, trained subset) cell with each
side's mean ± std over seeds and Welch's t of the difference, as markdown. The seeds are the same on
both sides, so B is a second measurement of A's trials, not extra seeds: never pool them.
"""
import argparse

import numpy as np
import pandas as pd
from scipy import stats

from sweeper import load

p = argparse.ArgumentParser()
p.add_argument("store_a")
p.add_argument("store_b")
p.add_argument("--study", required=True)
p.add_argument("--metric", default="test_acc")
a = p.parse_args()


def done(store: str) -> pd.DataFrame:
    t = load(store, a.study)
    return t[t["status"] == "done"]


left, right = done(a.store_a), done(a.store_b)
m = left.merge(right, on="trial_id", suffixes=("_a", "_b"))
d = (m[f"{a.metric}_b"] - m[f"{a.metric}_a"]) * 100
print(f"{a.study}: {len(left)} done in A, {len(right)} in B, {len(m)} matched by trial id")
for side in ("a", "b"):
    print(f"  {side.upper()}: device {sorted(m[f'device_{side}'].unique())}, gpus {sorted(float(g) for g in m[f'gpus_{side}'].unique())}, "
          f"median train_seconds {m[f'train_seconds_{side}'].median():.0f}")
print(f"B - A ({a.metric}, points): mean {d.mean():+.2f}, std {d.std():.2f}, mean |d| {d.abs().mean():.2f}, "
      f"largest |d| {d.abs().max():.2f}, identical {int((d == 0).sum())}")
for subset, x in d.groupby(m["trainable_a"]):
    print(f"  {subset}: mean {x.mean():+.2f}, mean |d| {x.abs().mean():.2f}, largest |d| {x.abs().max():.2f} (n={len(x)})")

print(f"\n| network | trained | A {a.metric} (%) | B {a.metric} (%) | B - A | Welch t |\n|---|---|---|---|---|---|")
for (subset, _, model), cell in m.groupby(["trainable_a", "bn_params_a", "model_a"]):
    x, y = cell[f"{a.metric}_a"] * 100, cell[f"{a.metric}_b"] * 100
    t = stats.ttest_ind(y, x, equal_var=False).statistic if len(cell) > 1 else np.nan
    print(f"| {model} | {subset} | {x.mean():.1f} ± {x.std():.1f} | {y.mean():.1f} ± {y.std():.1f} | "
          f"{y.mean() - x.mean():+.1f} | {t:.1f} |")
