"""Figs. 1-3 of Frankle et al.: accuracy by trainable subset, deeper against wider, and against
the number of BN parameters."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweeper.analysis.frankle.common import (
    SERIES_MARKER,
    SERIES_STYLE,
    accuracy_panel,
    chance_line,
    count_axis,
    legend_outside,
    log2_axis,
    ordered_subsets,
    series,
    series_handles,
    settings,
    subset_handles,
    title,
    top5_recorded,
    train_trials,
)
from sweeper.analysis.style import plt, save


# -- Fig. 1: all vs all-but-bn -------------------------------------------------------------------
def all_vs_all_but_bn(tables, out: Path) -> list[Path]:
    """Fig. 1: accuracy when training everything versus everything but γ, β (pinned at 1, 0),
    against depth (deeper series) and width (wider series)."""
    trials = train_trials(tables)
    if trials.empty or not {"all", "all-but-bn"} <= set(trials["trainable"]):
        return []
    paths = []
    for suffix, setting, frame in settings(trials):
        frame = frame[frame["trainable"].isin(["all", "all-but-bn"])]
        paths += _two_panel_accuracy(frame, out, "all_vs_all_but_bn" + suffix,
                                     title("Fig. 1: training all parameters vs all but BatchNorm", setting))
    return paths


def accuracies(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, axis label) of the accuracies to draw: top-1, and top-5 where the paper gives it
    (ImageNet) and the trials recorded it."""
    top1 = [("test_acc", "top-1 test accuracy (%)" if top5_recorded(frame) else "test accuracy (%)")]
    return top1 + ([("test_top5", "top-5 test accuracy (%)")] if top5_recorded(frame) else [])


def _two_panel_accuracy(frame: pd.DataFrame, out: Path, name: str, title: str) -> list[Path]:
    kinds = series(frame)
    if not kinds:
        return []
    subsets = ordered_subsets(frame["trainable"])
    values = accuracies(frame)
    fig, axes = plt.subplots(len(values), len(kinds), figsize=(4.2 * len(kinds), 3.6 * len(values)),
                             sharey="row", squeeze=False)
    for (value, label), row in zip(values, axes):
        for ax, (kind, rows, text) in zip(row, kinds):
            x = "depth" if kind == "deeper" else "width"
            accuracy_panel(ax, rows, x, subsets, SERIES_STYLE[kind], SERIES_MARKER[kind], value=value)
            log2_axis(ax, rows[x])
            if value == "test_acc":
                chance_line(ax, frame)
            fixed = f"width {rows['width'].iloc[0]}" if x == "depth" else f"depth {rows['depth'].iloc[0]}"
            ax.set_xlabel(f"{x}  (at {fixed})")
        row[0].set_ylabel(label)
    fig.suptitle(title, fontsize=10)
    legend_outside(fig, subset_handles(subsets))
    fig.tight_layout()
    return save(fig, out, name)


# -- Fig. 2: accuracy vs depth and width per subset -----------------------------------------------
def accuracy_vs_depth_width(tables, out: Path) -> list[Path]:
    """Fig. 2: accuracy against depth (deeper series) and against width (wider series), one line
    per trainable subset."""
    trials = train_trials(tables)
    if trials.empty:
        return []
    paths = []
    for suffix, setting, frame in settings(trials):
        paths += _two_panel_accuracy(frame, out, "accuracy_vs_depth_width" + suffix,
                                     title("Fig. 2: accuracy by trainable subset, deeper and wider", setting))
    return paths


# -- Fig. 3: accuracy vs BN parameter count -------------------------------------------------------
def accuracy_vs_bn_params(tables, out: Path) -> list[Path]:
    """Fig. 3: test accuracy against the number of BN parameters, one colour per trainable
    subset; solid = deeper, dashed = wider; error bars over seeds. At equal BN count, the deeper
    network's BN-only accuracy is the paper's 'deeper beats wider' comparison, and random-k trains
    exactly as many parameters as BN-only."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "bn_params"))
    if trials.empty:
        return []
    trials = trials[trials["bn_params"] > 0]
    if trials.empty:
        return []
    paths = []
    for suffix, setting, frame in settings(trials):
        kinds = series(frame)
        subsets = ordered_subsets(frame["trainable"])
        values = accuracies(frame)
        fig, axes = plt.subplots(1, len(values), figsize=(6.2 * len(values), 4.2), squeeze=False)
        for (value, label), ax in zip(values, axes[0]):
            for kind, rows, _ in kinds:
                accuracy_panel(ax, rows, "bn_params", subsets, SERIES_STYLE[kind], SERIES_MARKER[kind], value=value)
            label_subset = "bn" if "bn" in subsets else subsets[0]
            named = set()
            for kind, rows, _ in kinds:  # name each network once, on one subset's points
                pts = rows[rows["trainable"] == label_subset].groupby("model").agg(
                    acc=(value, "mean"), bn_params=("bn_params", "first")).reset_index()
                for _, p in pts[~pts["model"].isin(named)].iterrows():
                    named.add(p["model"])
                    ax.annotate(p["model"], (p["bn_params"], p["acc"] * 100), textcoords="offset points",
                                xytext=(4, -9 if kind == "wider" else 4), fontsize=6, color="#555555")
            count_axis(ax)
            ax.set_xlabel("BatchNorm parameters (γ and β)")
            ax.set_ylabel(label)
            if value == "test_acc":
                chance_line(ax, frame)
        fig.suptitle(title("Fig. 3: accuracy vs BN parameter count, deepening vs widening", setting), fontsize=10)
        legend_outside(fig, subset_handles(subsets) + series_handles([(k, t) for k, _, t in kinds]))
        fig.tight_layout()
        paths += save(fig, out, "accuracy_vs_bn_params" + suffix)
    return paths

