"""Fig. 7 of Frankle et al. (dead ReLUs) and Table 1 (parameters by group)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sweeper.analysis.frankle.common import (
    per_setting,
    SERIES_MARKER,
    SERIES_STYLE,
    count_axis,
    legend_outside,
    model_order,
    ordered_subsets,
    series,
    series_grid,
    series_handles,
    setting_fields,
    subset_colour,
    subset_handles,
    subset_label,
    title,
    train_trials,
)
from sweeper.analysis.join import columns, with_trials
from sweeper.analysis.style import mean_std, plt, save, save_csv


# -- Fig. 7: dead ReLUs --------------------------------------------------------------------------
DEAD_COLUMNS = ("trial_id", "layer_index", "dead_unit_fraction", "units", "dead_channel_fraction", "channels")

def dead_units(dead: pd.DataFrame) -> pd.DataFrame:
    """Per trial: the unit-weighted fraction of dead units and of dead channels over all layers."""
    d = dead.assign(du=dead["dead_unit_fraction"] * dead["units"], dc=dead["dead_channel_fraction"] * dead["channels"])
    g = d.groupby("trial_id", observed=True)[["du", "units", "dc", "channels"]].sum()
    return pd.DataFrame({"dead_units": g["du"] / g["units"], "dead_channels": g["dc"] / g["channels"]}).reset_index()


def dead_frame(tables) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(trials, per-trial dead shares joined to the trials, the per-layer table joined too)."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "bn_params"))
    if trials.empty or "dead_relu" not in tables:
        return trials, pd.DataFrame(), pd.DataFrame()
    # only the columns drawn, trial_id as codes: 10,000 deep trials hold millions of rows here
    dead = columns(tables, "dead_relu", DEAD_COLUMNS)
    if dead.empty or not {"trial_id", "dead_unit_fraction", "units"} <= set(dead):
        return trials, pd.DataFrame(), pd.DataFrame()
    cols = ["trainable", "model", "depth", "width", "bn_params", "seed"]
    return trials, with_trials(dead_units(dead), trials, cols), with_trials(dead, trials, cols)


def dead_relu(tables, out: Path) -> list[Path]:
    """Fig. 7 as the paper draws it: the share of ReLUs that output 0 on more than 99% of test
    inputs, per unit (top) and per channel (bottom), against depth (deeper series) and width
    (wider series), one line per trainable subset."""
    trials, overall, _ = dead_frame(tables)
    if overall.empty:
        return []
    paths = []
    for suffix, setting, frame, part in per_setting(trials, overall):
        part = part.assign(units_pct=part["dead_units"] * 100, channels_pct=part["dead_channels"] * 100)
        subsets = ordered_subsets(part["trainable"])
        panels = [("dead units (per position)", part, "units_pct"), ("dead channels", part, "channels_pct")]
        fig, _, _ = series_grid(part, panels, "trainable", subsets, subset_colour, subset_label, "dead (%)")
        fig.suptitle(title("Fig. 7: dead ReLUs (zero on > 99% of test inputs), deeper and wider", setting),
                     fontsize=10)
        legend_outside(fig, subset_handles(subsets))
        fig.tight_layout()
        paths += save(fig, out, "dead_relu" + suffix)
    return paths


def dead_relu_vs_bn_params(tables, out: Path) -> list[Path]:
    """Fig. 7 against the BN parameter count (an extra): dead units and channels, and dead units
    per layer for the deepest network."""
    trials, overall, per_layer = dead_frame(tables)
    if overall.empty:
        return []
    paths = []
    for suffix, setting, frame, part in per_setting(trials, overall):
        subsets = ordered_subsets(part["trainable"])
        kinds = series(part)
        fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.6), squeeze=False)
        for ax, col, name in zip(axes[0][:2], ("dead_units", "dead_channels"), ("units (per position)", "channels")):
            for kind, rows, _ in kinds:
                for subset in subsets:
                    r = rows[rows["trainable"] == subset]
                    if r.empty:
                        continue
                    stats = mean_std(r.assign(pct=r[col] * 100), ["bn_params"], "pct").sort_values("bn_params")
                    ax.errorbar(stats["bn_params"], stats["mean"], yerr=stats["std"], color=subset_colour(subset),
                                linestyle=SERIES_STYLE[kind], marker=SERIES_MARKER[kind], ms=4, capsize=3)
            count_axis(ax)
            ax.set_xlabel("BN parameters")
            ax.set_ylabel(f"dead {name} (%)")
            ax.set_title(f"dead {name}")
        ax = axes[0][2]
        layers = per_layer[per_layer["trial_id"].isin(part["trial_id"])]
        deepest = layers.sort_values(["depth", "width"]).iloc[-1]["model"] if not layers.empty else None
        for subset in subsets:
            r = layers[(layers["model"] == deepest) & (layers["trainable"] == subset)]
            if r.empty:
                continue
            stats = mean_std(r.assign(pct=r["dead_unit_fraction"] * 100), ["layer_index"], "pct")
            ax.plot(stats["layer_index"], stats["mean"], color=subset_colour(subset), marker=".", lw=1.2)
        ax.set_xlabel("activation layer (input to output)")
        ax.set_ylabel("dead units (%)")
        ax.set_title(f"per layer, {deepest}")
        handles = subset_handles(subsets) + series_handles([(k, t) for k, _, t in kinds])
        fig.suptitle(title("Fig. 7 (extra): dead ReLUs against the BN parameter count", setting), fontsize=10)
        legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "dead_relu_vs_bn_params" + suffix)
    return paths


# -- Table 1: parameters by group ----------------------------------------------------------------
PARAM_COLUMNS = {"total_params": "total", "bn_params": "batchnorm", "output_params": "output",
                 "shortcut_params": "shortcut"}


def params_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per network (and per varying setting that changes counts, such as norm): its
    parameter counts by group, as the trials table records them."""
    fields = [f for f in setting_fields(trials) if f in ("family", "norm", "dataset", "residual_init", "activation")]
    keys = ["model", *fields]
    first = trials.groupby(keys, dropna=False).first().reset_index()
    table = first[[*keys, "depth", "width", *PARAM_COLUMNS]].rename(columns=PARAM_COLUMNS)
    for col in PARAM_COLUMNS.values():
        table[col] = table[col].astype("int64")
    table["batchnorm_share_pct"] = (100 * table["batchnorm"] / table["total"]).round(3)
    for group in ("batchnorm", "output", "shortcut"):  # the paper's percentage rows
        table[f"{group}_pct"] = (100 * table[group] / table["total"]).round(3)
    order = {m: i for i, m in enumerate(model_order(trials))}
    table["_o"] = table["model"].map(order)
    return table.sort_values(["_o", *fields]).drop(columns="_o").reset_index(drop=True)


def _markdown(table: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, (int, np.integer)):
            return f"{v:,}"
        if isinstance(v, (float, np.floating)):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def table1_params(tables, out: Path) -> list[Path]:
    """Table 1: parameters by group (total, batchnorm, output layer, shortcut 1x1 convs) for each
    network of the study, as CSV and Markdown."""
    trials = train_trials(tables, need=("model", "depth", "width", "trainable", "test_acc", *PARAM_COLUMNS))
    if trials.empty:
        return []
    table = params_table(trials)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "table1_params.csv", out / "table1_params.md"
    save_csv(table, csv)
    md.write_text("Table 1: parameters by group (Frankle et al. 2021)\n\n" + _markdown(table)
                  + "\nAs the paper lays it out (one column per network; % of all parameters):\n\n"
                  + _markdown(paper_layout(table)))
    return [csv, md]


PAPER_ROWS = (("Total", "total"), ("BatchNorm", "batchnorm"), ("BatchNorm (%)", "batchnorm_pct"),
              ("Output", "output"), ("Output (%)", "output_pct"), ("Shortcut", "shortcut"),
              ("Shortcut (%)", "shortcut_pct"))


def paper_layout(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as the paper prints it: one row per group and its share of the total, one column
    per network (a network listed twice, under two settings, keeps its first counts)."""
    first = table.drop_duplicates("model")
    out = {"parameters": [name for name, _ in PAPER_ROWS]}
    for _, r in first.iterrows():
        out[r["model"]] = [int(r[c]) if not c.endswith("_pct") else f"{r[c]:.2f}%" for _, c in PAPER_ROWS]
    return pd.DataFrame(out)


