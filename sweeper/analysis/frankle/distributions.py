"""The γ and β histograms that Fig. 4 (`gamma_distribution`) and its β companion
(`beta_distribution`) draw, computed for both figures at once.

Why together: at 10,000 trials the `bn` table has 82 million rows, and each figure needs two passes
over it (the percentiles that place its bins, then the per-trial histograms over those bins). Asked
for together, the two figures' percentiles share one pass and their histograms another
(sweeper.analysis.reduce.scan): two reads of the table instead of four.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweeper.analysis.frankle.common import SPARSITY_THRESHOLDS, ordered_subsets, settings, train_trials
from sweeper.analysis.join import among
from sweeper.analysis.digest import trial_summary
from sweeper.analysis.reduce import Histograms, Percentiles, cached, scan


def bn_summary(tables, trials: pd.DataFrame, need=("n",)) -> pd.DataFrame:
    """The per-trial summary of the `bn` table (sweeper.analysis.digest.trial_summary), of the
    given trials that have rows there; empty when there are none or the table lacks a column."""
    if trials.empty or "bn" not in tables:
        return pd.DataFrame()
    summary = trial_summary(tables, SPARSITY_THRESHOLDS)
    if summary.empty or not set(need) <= set(summary):
        return pd.DataFrame()
    return summary[among(summary.index, trials["trial_id"]) & (summary["n"] > 0).to_numpy()]


def trained_gamma_subsets(trials: pd.DataFrame, moved: pd.Index) -> list[str]:
    """The subsets among `trials` that trained γ."""
    return ordered_subsets(trials.loc[among(trials["trial_id"], moved), "trainable"].astype(str))


@dataclass
class Panels:
    """One figure's settings to draw: for each, (suffix, setting, frame of its trials, subsets or
    trials drawn); after `binned`, its bin edges and per-trial counts of each of `cols`."""
    column: str  # whose 0.5 and 99.5 percentiles place the bins
    cols: list[str]  # the columns histogrammed
    plans: list[tuple]
    summary: pd.DataFrame
    edges: object  # (lo, hi) -> bin edges
    placing: list[pd.Series]  # per plan: the trials whose values place its bins
    drawn: object  # (plan, column) -> the trial ids whose histogram of that column the figure draws
    bins: list[np.ndarray] | None = None
    counts: list[dict[str, np.ndarray]] | None = None  # per plan: column -> trials x bins
    ids: dict[str, pd.Index] | None = None  # column -> the trials of those rows

    def wanted(self, col: str) -> pd.Index:
        """Every trial whose histogram of `col` some panel draws: only they are counted."""
        return pd.Index(sorted(set().union(*(set(self.drawn(plan, col)) for plan in self.plans))))

    def histogram(self, plan: int, col: str, members) -> np.ndarray:
        """The counts of `col` over plan `plan`'s bins, summed over the trials `members`."""
        at = self.ids[col].get_indexer(pd.Index(members))
        return self.counts[plan][col][at[at >= 0]].sum(axis=0)


def _gamma_panels(tables) -> Panels | None:
    """Fig. 4: per setting, its trials that have `bn` rows and the subsets whose γ moved; bins from
    [min(p0.5, 0), max(p99.5, 1)], γ's initialisation being U[0, 1)."""
    trials = train_trials(tables)
    summary = bn_summary(tables, trials, ("gamma_count", "gamma_moved"))
    if summary.empty:
        return None
    moved = summary.index[summary["gamma_moved"] > 0]
    plans = []
    for suffix, setting, frame in settings(trials):
        frame = frame[among(frame["trial_id"], summary.index)]
        subsets = trained_gamma_subsets(frame, moved)
        if subsets:
            plans.append((suffix, setting, frame, subsets))

    def drawn(plan, col):  # trained γ of the subsets that train it; initial γ of the first one
        frame, subsets = plan[2], plan[3]
        return frame.loc[frame["trainable"].isin(subsets if col == "gamma" else subsets[:1]), "trial_id"]

    return Panels("gamma", ["gamma", "gamma_init"], plans, summary,
                  lambda lo, hi: np.linspace(min(lo, 0.0), max(hi, 1.0), 41),
                  [frame["trial_id"] for _, _, frame, _ in plans], drawn)


def _beta_panels(tables) -> Panels | None:
    """β after training: per setting, the trials whose β moved (β starts at 0); bins symmetric
    about 0."""
    trials = train_trials(tables)
    summary = bn_summary(tables, trials, ("beta_count", "beta_moved"))
    if summary.empty:
        return None
    summary = summary[summary["beta_moved"] > 0]
    if summary.empty:
        return None
    plans = []
    for suffix, setting, frame in settings(trials):
        part = frame[among(frame["trial_id"], summary.index)]
        if not part.empty:
            plans.append((suffix, setting, frame, part))

    def symmetric(lo, hi):
        span = max(abs(lo), abs(hi), 1e-3)
        return np.linspace(-span, span, 41)

    return Panels("beta", ["beta"], plans, summary, symmetric, [part["trial_id"] for *_, part in plans],
                  lambda plan, col: plan[3]["trial_id"])


def binned(tables) -> dict[str, Panels]:
    """"gamma" (Fig. 4) and "beta" (its companion), whichever has data, with their bins and
    per-trial histograms: every figure's percentiles in one pass over `bn`, every histogram in a
    second. The bins of a setting come from the 0.5 and 99.5 percentiles of its trials' values
    (as np.nanpercentile on their rows: sweeper.analysis.reduce.Percentiles)."""

    def compute() -> dict[str, Panels]:
        found = {p.column: p for p in (_gamma_panels(tables), _beta_panels(tables)) if p is not None and p.plans}
        if not found:
            return {}
        ids = pd.Index(sorted(set().union(*(p.summary.index for p in found.values()))))
        folds = []
        for p in found.values():
            groups = [among(ids, members) for members in p.placing]
            counts = [int(p.summary.loc[among(p.summary.index, ids[g]), f"{p.column}_count"].sum()) for g in groups]
            folds.append(Percentiles(p.column, groups, counts, ids))
        for p, pcts in zip(found.values(), scan(tables, "bn", folds)):
            p.bins = [p.edges(*(q if q is not None else (np.nan, np.nan))) for q in pcts]
            p.ids = {c: p.wanted(c) for c in p.cols}
        # each column counted for the trials drawn with it only (Fig. 4's initial γ: one subset's)
        wanted = [(p, c) for p in found.values() for c in p.cols]
        hists = scan(tables, "bn", [Histograms([c], p.bins, p.ids[c]) for p, c in wanted])
        for p in found.values():
            p.counts = [{} for _ in p.plans]
        for (p, c), counts in zip(wanted, hists):
            for i, h in enumerate(counts):
                p.counts[i][c] = h[c]
        return found

    return cached(tables, "distributions", compute)
