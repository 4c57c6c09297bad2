"""Figures for the normalisation layer as an axis (project issue 11): does training only γ and β
need BatchNorm's standardisation, or does any per-channel affine map do?

Reads `trials` (norm, residual_init, trainable, depth, width, test_acc) and `bn` (γ per channel,
with the trial's norm) from the store; draws only when a study varies the norm. pandas and
matplotlib only (no torch). One colour per trainable subset as in the Frankle figures; error bars
are one standard deviation over seeds.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from sweeper.analysis.frankle.common import (
    AXES,
    chance,
    ordered_subsets,
    settings,
    subset_colour,
    subset_label,
    train_trials,
)
from sweeper.analysis.frankle.distributions import trained_gamma_subsets
from sweeper.analysis.frankle.gamma import finish_gamma_grid, gamma_moved, gamma_table
from sweeper.analysis.join import with_trials
from sweeper.analysis.style import mean_std, plt, save, save_csv

NORM_ORDER = ("batch", "layer", "group", "instance", "affine", "none")
NORM_COLOURS = {"batch": "#1f77b4", "layer": "#ff7f0e", "group": "#2ca02c", "instance": "#9467bd",
                "affine": "#d62728", "none": "#7f7f7f"}
#: the norm (and the residual scale chosen with it) is what these figures draw, not a setting
NORM_AXES = AXES | {"norm", "residual_init"}


def norm_label(norm: str, residual_init: float = 1.0) -> str:
    """`group(groups=4)` -> `group(groups=4)`; a SkipInit scale other than 1 is named: `affine, α=0.1`."""
    label = str(norm)
    if residual_init is not None and not pd.isna(residual_init) and float(residual_init) != 1.0:
        label += f", α={float(residual_init):g}"
    return label


def _base(norm: str) -> str:
    """`group(groups=4)` -> `group`; `affine, α=0.1` -> `affine`."""
    return re.split(r"[(,]", str(norm), maxsplit=1)[0].strip()


def ordered_norms(labels) -> list[str]:
    labels = list(dict.fromkeys(labels))
    rank = lambda s: (NORM_ORDER.index(_base(s)) if _base(s) in NORM_ORDER else len(NORM_ORDER), s)  # noqa: E731
    return sorted(labels, key=rank)


def norm_colour(label: str) -> str:
    return NORM_COLOURS.get(_base(label), "#17becf")


def norm_trials(tables) -> pd.DataFrame:
    """Train trials of a study that varies the norm, with a `norm_label` column."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "norm"))
    if trials.empty:
        return trials
    residual = trials["residual_init"] if "residual_init" in trials else pd.Series(1.0, index=trials.index)
    trials = trials.assign(norm_label=[norm_label(n, r) for n, r in zip(trials["norm"], residual)])
    if trials["norm_label"].nunique() < 2:
        return pd.DataFrame()
    return trials


def norm_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of test accuracy (%) per norm, subset and network."""
    stats = mean_std(trials.assign(acc=trials["test_acc"] * 100), ["norm_label", "trainable", "model", "depth", "width"],
                     "acc")
    return stats.rename(columns={"mean": "test_acc_mean", "std": "test_acc_std", "count": "seeds"})


def norm_accuracy(tables, out: Path) -> list[Path]:
    """Accuracy by normalisation type (bars) and trainable subset (colours), one panel per
    network, with a CSV of the means."""
    trials = norm_trials(tables)
    if trials.empty:
        return []
    paths = []
    for suffix, setting, frame in settings(trials, NORM_AXES):
        stats = norm_summary(frame)
        norms = ordered_norms(stats["norm_label"])
        subsets = ordered_subsets(stats["trainable"])
        models = stats.sort_values(["width", "depth"])["model"].drop_duplicates().tolist()
        fig, axes = plt.subplots(1, len(models), figsize=(1.0 + 0.55 * len(norms) * max(len(subsets), 2) / 2 * len(models),
                                                         3.8), sharey=True, squeeze=False)
        width = 0.8 / len(subsets)
        for ax, model in zip(axes[0], models):
            for j, subset in enumerate(subsets):
                rows = stats[(stats["model"] == model) & (stats["trainable"] == subset)].set_index("norm_label")
                xs = np.arange(len(norms)) + (j - (len(subsets) - 1) / 2) * width
                means = [rows["test_acc_mean"].get(n, np.nan) for n in norms]
                errs = [rows["test_acc_std"].get(n, 0.0) for n in norms]
                ax.bar(xs, means, width * 0.95, yerr=errs, capsize=2, color=subset_colour(subset), label=subset)
            ax.set_xticks(range(len(norms)))
            ax.set_xticklabels(norms, rotation=35, ha="right", fontsize=8)
            ax.set_title(model)
            level = chance(frame)
            if level is not None:
                ax.axhline(level, color="#999999", linestyle=":", lw=1)
        axes[0][0].set_ylabel("test accuracy (%)")
        handles = [Line2D([], [], color=subset_colour(s), lw=6, label=subset_label(s)) for s in subsets]
        if chance(frame) is not None:
            handles.append(Line2D([], [], color="#999999", linestyle=":", label="chance"))
        title = "Accuracy by normalisation layer and trainable subset"
        fig.suptitle(f"{title}\n{setting}" if setting else title, fontsize=10)
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
        fig.tight_layout()
        paths += save(fig, out, "norm_accuracy" + suffix)
        csv = out / f"norm_accuracy{suffix}.csv"
        save_csv(stats, csv)
        paths.append(csv)
    return paths


def norm_accuracy_vs_depth(tables, out: Path) -> list[Path]:
    """Accuracy against depth, one line per normalisation type, one panel per trainable subset."""
    trials = norm_trials(tables)
    if trials.empty or trials["depth"].nunique() < 2:
        return []
    paths = []
    for suffix, setting, frame in settings(trials, NORM_AXES):
        frame = frame[frame["width"] == frame["width"].min()]
        subsets = ordered_subsets(frame["trainable"])
        norms = ordered_norms(frame["norm_label"])
        fig, axes = plt.subplots(1, len(subsets), figsize=(3.6 * len(subsets), 3.4), sharey=True, squeeze=False)
        for ax, subset in zip(axes[0], subsets):
            for norm in norms:
                rows = frame[(frame["trainable"] == subset) & (frame["norm_label"] == norm)]
                if rows.empty:
                    continue
                stats = mean_std(rows.assign(acc=rows["test_acc"] * 100), ["depth"], "acc").sort_values("depth")
                ax.errorbar(stats["depth"], stats["mean"], yerr=stats["std"], color=norm_colour(norm), marker="o",
                            ms=4, capsize=3, lw=1.5)
            depths = sorted(frame["depth"].unique())
            ax.set_xticks(depths)
            ax.set_xticklabels([str(d) for d in depths])
            ax.set_xlabel(f"depth (width {frame['width'].iloc[0]})")
            ax.set_title(subset_label(subset))
            level = chance(frame)
            if level is not None:
                ax.axhline(level, color="#999999", linestyle=":", lw=1)
        axes[0][0].set_ylabel("test accuracy (%)")
        handles = [Line2D([], [], color=norm_colour(n), marker="o", lw=2, label=n) for n in norms]
        title = "Accuracy vs depth by normalisation layer"
        fig.suptitle(f"{title}\n{setting}" if setting else title, fontsize=10)
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
        fig.tight_layout()
        paths += save(fig, out, "norm_accuracy_vs_depth" + suffix)
    return paths


def norm_gamma_distribution(tables, out: Path) -> list[Path]:
    """γ after training by normalisation type: one panel per norm that has γ, one colour per
    subset whose γ trains, the initial distribution in grey; the deepest network, channels
    pooled over layers and seeds."""
    trials = norm_trials(tables)
    bn = gamma_table(tables, trials)
    if bn.empty:
        return []
    moved = gamma_moved(bn)
    bn = with_trials(bn, trials, ["trainable", "model", "norm_label"])
    measured = bn["trial_id"].unique()
    paths = []
    for suffix, setting, frame in settings(trials, NORM_AXES):
        frame = frame[frame["trial_id"].isin(measured)]
        if frame.empty:
            continue
        deepest = frame.sort_values(["depth", "width"])["model"].iloc[-1]
        frame = frame[frame["model"] == deepest]
        subsets = trained_gamma_subsets(frame, moved)
        if not subsets:
            continue
        part = bn[bn["trial_id"].isin(frame["trial_id"])]
        norms = ordered_norms(part["norm_label"])
        ncols = min(3, len(norms))
        nrows = math.ceil(len(norms) / ncols)
        lo, hi = np.nanpercentile(part["gamma"], [0.5, 99.5])
        bins = np.linspace(min(lo, 0.0), max(hi, 1.0), 41)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.5 * nrows), squeeze=False)
        for ax, norm in zip(axes.ravel(), norms):
            rows = part[part["norm_label"] == norm]
            ax.hist(rows[rows["trainable"] == subsets[0]]["gamma_init"], bins=bins, density=True, color="#cccccc")
            for subset in subsets:
                g = rows[rows["trainable"] == subset]["gamma"]
                if len(g):
                    ax.hist(g, bins=bins, density=True, histtype="step", lw=1.6, color=subset_colour(subset))
                    near = (g.abs() < 0.05).mean() * 100
                    ax.annotate(f"{subset}: {near:.0f}% |γ|<0.05", (0.98, 0.95 - 0.1 * subsets.index(subset)),
                                xycoords="axes fraction", ha="right", va="top", fontsize=6.5,
                                color=subset_colour(subset))
            ax.axvline(0, color="#999999", lw=0.8, linestyle=":")
            ax.set_title(norm, fontsize=9)
            ax.set_yticks([])
        handles = finish_gamma_grid(axes, len(norms), bins, subsets)
        title = f"γ after training by normalisation layer ({deepest})"
        fig.suptitle(f"{title}\n{setting}" if setting else title, fontsize=10)
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
        fig.tight_layout()
        paths += save(fig, out, "norm_gamma_distribution" + suffix)
    return paths


FIGURES = {
    "norm_accuracy": norm_accuracy,
    "norm_accuracy_vs_depth": norm_accuracy_vs_depth,
    "norm_gamma_distribution": norm_gamma_distribution,
}
