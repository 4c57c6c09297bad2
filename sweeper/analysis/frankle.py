"""Figures 1-7 and Table 1 of Frankle, Schwab & Morcos (2021), "Training BatchNorm and only
BatchNorm", redrawn from the store's tables alone (pandas + matplotlib; no torch).

Tables read (each joined to `trials` on `trial_id`):
  trials     one row per trial: every TrainSpec field, test_acc, the parameter counts by group
  bn         every γ, β per channel with its layer (measure `bn`)      -> Fig. 4, Fig. 5
  clamp      accuracy with |γ| < t zeroed, per threshold (`clamp`)      -> Fig. 6
  dead_relu  dead-unit fractions per activation layer (`dead_relu`)     -> Fig. 7

Two ways to grow a network are told apart as the paper does: *deeper* is the series at the
study's smallest width (ResNet-D, W = 16), *wider* the series at its smallest depth (WRN-14-k).
One colour per trainable subset throughout; solid lines are deeper, dashed lines wider; error bars
are one standard deviation over seeds. When a study varies anything else (norm, activation, init,
dataset, ...), each value gets its own file, suffixed `__field=value`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sweeper.analysis.join import columns, per_trial_means, with_trials
from sweeper.analysis.style import done, mean_std, plt, save
from sweeper.experiments.train.spec import TrainSpec  # a dataclass only: importing it loads no torch

# -- conventions shared by every figure -----------------------------------------------------------
SUBSET_ORDER = ("all", "all-but-bn", "bn", "bn+output", "output", "random", "shortcut", "none")
SUBSET_COLOURS = {
    "all": "#222222",
    "all-but-bn": "#8c8c8c",
    "bn": "#1f77b4",
    "bn+output": "#9467bd",
    "output": "#2ca02c",
    "random": "#d62728",
    "shortcut": "#ff7f0e",
    "none": "#8c564b",
}
SUBSET_LABELS = {
    "all": "all parameters",
    "all-but-bn": "all but BN (γ=1, β=0)",
    "bn": "BN only (γ, β)",
    "bn+output": "BN + output layer",
    "output": "output layer only",
    "random": "random-k (as many as BN)",
    "shortcut": "shortcut 1x1 convs",
    "none": "nothing (at init)",
}
SERIES_STYLE = {"deeper": "-", "wider": "--"}
SERIES_MARKER = {"deeper": "o", "wider": "s"}
CLASSES = {"cifar100": 100}  # chance level = 1 / classes; every other dataset here has 10
SPARSITY_THRESHOLDS = (0.01, 0.05, 0.1, 0.2)

SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(TrainSpec))
#: fields the figures draw (or that are not settings); every other varying spec field splits files
AXES = frozenset({"depth", "width", "trainable", "seed", "random_k", "measure", "clamp_thresholds"})
#: values a subset itself implies (all-but-bn pins γ, β; `none` trains 0 epochs): not settings
IMPLIED = {"bn_init": {"all-but-bn"}, "epochs": {"none"}}


def subset_colour(subset: str) -> str:
    return SUBSET_COLOURS.get(subset, "#17becf")


def subset_label(subset: str) -> str:
    return SUBSET_LABELS.get(subset, subset)


def ordered_subsets(values) -> list[str]:
    values = list(dict.fromkeys(values))
    return sorted(values, key=lambda s: (SUBSET_ORDER.index(s) if s in SUBSET_ORDER else len(SUBSET_ORDER), s))


# -- selecting and splitting trials ---------------------------------------------------------------
def train_trials(tables, need: tuple[str, ...] = ("trainable", "depth", "width", "test_acc")) -> pd.DataFrame:
    """Finished trials of the `train` experiment that have the columns a figure needs."""
    trials = done(tables.get("trials"))
    if trials.empty:
        return pd.DataFrame()
    if "experiment" in trials:
        trials = trials[trials["experiment"] == "train"]
    if trials.empty or any(c not in trials for c in need):
        return pd.DataFrame()
    return trials.dropna(subset=[c for c in need if c != "test_acc"]).reset_index(drop=True)


def setting_fields(trials: pd.DataFrame, axes=AXES) -> list[str]:
    fields = []
    for f in SPEC_FIELDS:
        if f in axes or f not in trials:
            continue
        rows = trials[~trials["trainable"].isin(IMPLIED.get(f, ()))]
        if rows[f].astype(str).nunique() > 1:
            fields.append(f)
    return fields


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def settings(trials: pd.DataFrame, axes=AXES) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(file suffix, title text, trials) for each combination of the varying non-drawn fields.
    A value a subset implies (bn_init of all-but-bn) matches every setting."""
    fields = setting_fields(trials, axes)
    if not fields:
        yield "", "", trials
        return
    implied = set().union(*(IMPLIED.get(f, set()) for f in fields))
    base = trials[~trials["trainable"].isin(implied)]
    base = base if len(base) else trials
    keys = base[fields].astype(str).drop_duplicates().sort_values(fields)
    text = trials[fields].astype(str)
    for key in keys.itertuples(index=False):
        mask = pd.Series(True, index=trials.index)
        for f, v in zip(fields, key):
            mask &= (text[f] == v) | trials["trainable"].isin(IMPLIED.get(f, ()))
        pairs = [f"{f}={v}" for f, v in zip(fields, key)]
        suffix = "__" + re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "_".join(pairs)).strip("-")
        yield suffix, ", ".join(pairs), trials[mask]


def series(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """The deeper series (smallest width, depth varies) and the wider series (smallest depth,
    width varies) as (kind, rows, description); a series with one network is left out unless
    nothing varies at all."""
    w0, d0 = frame["width"].min(), frame["depth"].min()
    deep, wide = frame[frame["width"] == w0], frame[frame["depth"] == d0]
    out = []
    if deep["depth"].nunique() > 1:
        out.append(("deeper", deep, f"deeper (width {w0}, depth varies)"))
    if wide["width"].nunique() > 1:
        out.append(("wider", wide, f"wider (depth {d0}, width varies)"))
    if not out and len(frame):
        out.append(("deeper", deep, f"depth {d0}, width {w0}"))
    return out


def model_order(frame: pd.DataFrame) -> list[str]:
    """Models in reading order: the deeper series by depth, then the wider series by width."""
    keys = frame.drop_duplicates("model")[["model", "depth", "width"]]
    w0, d0 = keys["width"].min(), keys["depth"].min()
    deep = keys[keys["width"] == w0].sort_values("depth")["model"].tolist()
    wide = keys[(keys["depth"] == d0) & (keys["width"] != w0)].sort_values("width")["model"].tolist()
    rest = keys[~keys["model"].isin(deep + wide)].sort_values(["width", "depth"])["model"].tolist()
    return deep + wide + rest


def model_title(rows: pd.DataFrame) -> str:
    """`resnet-8 (D 8, W 16)`: the registry's name with its depth and width spelled out."""
    r = rows.iloc[0]
    return f"{r['model']} (D {r['depth']}, W {r['width']})"


def chance(trials: pd.DataFrame) -> float | None:
    if "dataset" not in trials or trials["dataset"].nunique() != 1:
        return None
    return 100.0 / CLASSES.get(str(trials["dataset"].iloc[0]), 10)


def _title(base: str, setting: str) -> str:
    return f"{base}\n{setting}" if setting else base


def _log2_axis(ax, values) -> None:
    values = sorted({int(v) for v in values})
    if len(values) > 1 and values[-1] / max(values[0], 1) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()


def human(v: float) -> str:
    """A count as a reader writes it: 336, 8.2k, 1.7M."""
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:g}"


def _count_axis(ax) -> None:
    """A log x-axis of parameter counts with plain labels (336, 1k, 8.2k)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _subset_handles(subsets: list[str]) -> list[Line2D]:
    return [Line2D([], [], color=subset_colour(s), marker="o", lw=2, label=subset_label(s)) for s in subsets]


def _series_handles(kinds: list[tuple[str, str]]) -> list[Line2D]:
    return [
        Line2D([], [], color="#555555", linestyle=SERIES_STYLE[k], marker=SERIES_MARKER[k], label=text)
        for k, text in kinds
    ]


def _legend_outside(fig, handles: list[Line2D]) -> None:
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)


def _accuracy_panel(ax, frame: pd.DataFrame, x: str, subsets: list[str], style: str, marker: str) -> None:
    for subset in subsets:
        rows = frame[frame["trainable"] == subset]
        if rows.empty:
            continue
        stats = mean_std(rows.assign(acc=rows["test_acc"] * 100), [x], "acc").sort_values(x)
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"], color=subset_colour(subset), linestyle=style,
                    marker=marker, ms=4, capsize=3, lw=1.5)


def _chance_line(ax, trials: pd.DataFrame) -> None:
    level = chance(trials)
    if level is not None:
        ax.axhline(level, color="#999999", linestyle=":", lw=1)
        ax.annotate("chance", (0.01, level), xycoords=("axes fraction", "data"), fontsize=7, color="#777777",
                    va="bottom")


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
                                     _title("Fig. 1: training all parameters vs all but BatchNorm", setting))
    return paths


def _two_panel_accuracy(frame: pd.DataFrame, out: Path, name: str, title: str) -> list[Path]:
    kinds = series(frame)
    if not kinds:
        return []
    subsets = ordered_subsets(frame["trainable"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), sharey=True, squeeze=False)
    for ax, (kind, rows, text) in zip(axes[0], kinds):
        x = "depth" if kind == "deeper" else "width"
        _accuracy_panel(ax, rows, x, subsets, SERIES_STYLE[kind], SERIES_MARKER[kind])
        _log2_axis(ax, rows[x])
        _chance_line(ax, frame)
        fixed = f"width {rows['width'].iloc[0]}" if x == "depth" else f"depth {rows['depth'].iloc[0]}"
        ax.set_xlabel(f"{x}  (at {fixed})")
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle(title, fontsize=10)
    _legend_outside(fig, _subset_handles(subsets))
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
                                     _title("Fig. 2: accuracy by trainable subset, deeper and wider", setting))
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
        fig, ax = plt.subplots(figsize=(6.2, 4.2))
        for kind, rows, _ in kinds:
            _accuracy_panel(ax, rows, "bn_params", subsets, SERIES_STYLE[kind], SERIES_MARKER[kind])
        label_subset = "bn" if "bn" in subsets else subsets[0]
        named = set()
        for kind, rows, _ in kinds:  # name each network once, on one subset's points
            pts = rows[rows["trainable"] == label_subset].groupby("model").agg(
                acc=("test_acc", "mean"), bn_params=("bn_params", "first")).reset_index()
            for _, p in pts[~pts["model"].isin(named)].iterrows():
                named.add(p["model"])
                ax.annotate(p["model"], (p["bn_params"], p["acc"] * 100), textcoords="offset points",
                            xytext=(4, -9 if kind == "wider" else 4), fontsize=6, color="#555555")
        _count_axis(ax)
        ax.set_xlabel("BatchNorm parameters (γ and β)")
        ax.set_ylabel("test accuracy (%)")
        _chance_line(ax, frame)
        ax.set_title(_title("Fig. 3: accuracy vs BN parameter count, deepening vs widening", setting))
        _legend_outside(fig, _subset_handles(subsets) + _series_handles([(k, t) for k, _, t in kinds]))
        fig.tight_layout()
        paths += save(fig, out, "accuracy_vs_bn_params" + suffix)
    return paths


# -- Fig. 4: γ distributions ---------------------------------------------------------------------
GAMMA_COLUMNS = ("trial_id", "gamma", "gamma_init")  # all that the γ figures read of the `bn` table


def gamma_table(tables, trials: pd.DataFrame) -> pd.DataFrame:
    """The `bn` rows (trial_id, γ, initial γ) of the given trials; empty when there are none."""
    if trials.empty or "bn" not in tables:
        return pd.DataFrame()
    bn = columns(tables, "bn", GAMMA_COLUMNS)
    if bn.empty or not set(GAMMA_COLUMNS) <= set(bn):
        return pd.DataFrame()
    keep = bn["trial_id"].isin(trials["trial_id"])
    return bn if keep.all() else bn[keep].reset_index(drop=True)  # no 8M-row copy when all are wanted


def gamma_moved(bn: pd.DataFrame) -> pd.Index:
    """The trials whose γ moved in training (the others still show their initialisation)."""
    moved = per_trial_means(bn["trial_id"], {"moved": (bn["gamma"] != bn["gamma_init"]).to_numpy()})["moved"]
    return moved.index[moved > 0]


def trained_gamma_subsets(trials: pd.DataFrame, moved: pd.Index) -> list[str]:
    """The subsets among `trials` that trained γ."""
    return ordered_subsets(trials.loc[trials["trial_id"].isin(moved), "trainable"].astype(str))


def gamma_distribution(tables, out: Path) -> list[Path]:
    """Fig. 4: the distribution of γ after training, one panel per network, one colour per
    subset whose γ trains, with the initial distribution in grey; channels pooled over layers
    and seeds."""
    trials = train_trials(tables)
    bn = gamma_table(tables, trials)
    if bn.empty:
        return []
    moved = gamma_moved(bn)
    bn = with_trials(bn, trials, ["trainable", "model"])
    measured = bn["trial_id"].unique()
    paths = []
    for suffix, setting, frame in settings(trials):
        frame = frame[frame["trial_id"].isin(measured)]
        subsets = trained_gamma_subsets(frame, moved)
        if not subsets:
            continue
        part = bn[bn["trial_id"].isin(frame["trial_id"])]
        models = model_order(frame)[:16]
        ncols = min(4, len(models))
        nrows = math.ceil(len(models) / ncols)
        lo, hi = np.nanpercentile(part["gamma"], [0.5, 99.5])
        lo, hi = min(lo, 0.0), max(hi, 1.0)
        bins = np.linspace(lo, hi, 41)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), squeeze=False)
        for ax, model in zip(axes.ravel(), models):
            rows = part[part["model"] == model]
            init = rows[rows["trainable"] == subsets[0]]["gamma_init"]
            ax.hist(init, bins=bins, density=True, color="#cccccc", label="at initialisation")
            for subset in subsets:
                g = rows[rows["trainable"] == subset]["gamma"]
                if len(g):
                    ax.hist(g, bins=bins, density=True, histtype="step", lw=1.6, color=subset_colour(subset))
            ax.axvline(0, color="#999999", lw=0.8, linestyle=":")
            ax.set_title(model_title(frame[frame["model"] == model]), fontsize=9)
            ax.set_yticks([])
        handles = finish_gamma_grid(axes, len(models), bins, subsets)
        fig.suptitle(_title("Fig. 4: distribution of γ after training (density)", setting), fontsize=10)
        _legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "gamma_distribution" + suffix)
    return paths


# -- Fig. 5: γ sparsity ---------------------------------------------------------------------------
def gamma_sparsity(bn: pd.DataFrame, thresholds=SPARSITY_THRESHOLDS) -> pd.DataFrame:
    """Per trial and threshold t: the fraction of γ with |γ| < t (strictly, as clamping uses),
    after training (`fraction`) and at initialisation (`fraction_init`)."""
    cols = ["trial_id", "threshold", "channels", "fraction", "fraction_init"]
    if bn.empty:
        return pd.DataFrame(columns=cols)
    gamma, gamma0 = bn["gamma"].abs().to_numpy(), bn["gamma_init"].abs().to_numpy()
    thresholds = [float(t) for t in thresholds]
    after = {f"after{i}": gamma < t for i, t in enumerate(thresholds)}
    init = {f"init{i}": gamma0 < t for i, t in enumerate(thresholds)}
    means = per_trial_means(bn["trial_id"], {**after, **init})
    k = len(thresholds)
    return pd.DataFrame({
        "trial_id": np.repeat(means.index.to_numpy(dtype=object), k),
        "threshold": np.tile(thresholds, len(means)),
        "channels": np.repeat(means["n"].to_numpy(), k),
        "fraction": means[list(after)].to_numpy().ravel(),
        "fraction_init": means[list(init)].to_numpy().ravel(),
    }, columns=cols)


def gamma_sparsity_figure(tables, out: Path) -> list[Path]:
    """Fig. 5: the fraction of |γ| below thresholds against the BN parameter count, one panel
    per threshold; dotted grey: the same fraction at initialisation (U[0, 1): t)."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "bn_params"))
    bn = gamma_table(tables, trials)
    if bn.empty:
        return []
    moved = gamma_moved(bn)
    sparsity = with_trials(gamma_sparsity(bn), trials, ["trainable", "model", "depth", "width", "bn_params", "seed"])
    paths = []
    for suffix, setting, frame in settings(trials):
        part = sparsity[sparsity["trial_id"].isin(frame["trial_id"])]
        moved_subsets = trained_gamma_subsets(frame, moved)
        part = part[part["trainable"].isin(moved_subsets)]
        if part.empty:
            continue
        subsets = ordered_subsets(part["trainable"])
        kinds = series(part)
        thresholds = sorted(part["threshold"].unique())
        fig, axes = plt.subplots(1, len(thresholds), figsize=(3.3 * len(thresholds), 3.4), squeeze=False)
        for ax, t in zip(axes[0], thresholds):
            at = part[part["threshold"] == t]
            for kind, _, _ in kinds:
                rows = at[at["width"] == at["width"].min()] if kind == "deeper" else at[at["depth"] == at["depth"].min()]
                for subset in subsets:
                    r = rows[rows["trainable"] == subset]
                    if r.empty:
                        continue
                    stats = mean_std(r.assign(pct=r["fraction"] * 100), ["bn_params"], "pct").sort_values("bn_params")
                    ax.errorbar(stats["bn_params"], stats["mean"], yerr=stats["std"], color=subset_colour(subset),
                                linestyle=SERIES_STYLE[kind], marker=SERIES_MARKER[kind], ms=4, capsize=3)
            ax.axhline(at["fraction_init"].mean() * 100, color="#999999", linestyle=":", lw=1)
            _count_axis(ax)
            ax.set_title(f"|γ| < {t:g}")
            ax.set_xlabel("BN parameters")
        axes[0][0].set_ylabel("share of γ (%)")
        handles = _subset_handles(subsets) + _series_handles([(k, t) for k, _, t in kinds])
        handles.append(Line2D([], [], color="#999999", linestyle=":", label="at initialisation"))
        fig.suptitle(_title("Fig. 5: share of γ near zero after training", setting), fontsize=10)
        _legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "gamma_sparsity" + suffix)
        csv = out / f"gamma_sparsity{suffix}.csv"
        part.sort_values(["trainable", "bn_params", "seed", "threshold"]).to_csv(csv, index=False)
        paths.append(csv)
    return paths


# -- Fig. 6: clamping small γ to zero -------------------------------------------------------------
def clamp_accuracy(tables, out: Path) -> list[Path]:
    """Fig. 6: the change in test accuracy when every γ with |γ| < t is set to 0, against the
    fraction of γ so clamped; one panel per subset whose γ trains, one line per network."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "bn_params"))
    if trials.empty or "clamp" not in tables:
        return []
    clamp = tables["clamp"]
    if clamp.empty or not {"trial_id", "threshold", "fraction_clamped", "test_acc"} <= set(clamp):
        return []
    clamp = with_trials(clamp.rename(columns={"test_acc": "clamped_acc"}), trials,
                        ["trainable", "model", "depth", "width", "bn_params", "seed", "test_acc"])
    if clamp.empty:
        return []
    clamp["change"] = (clamp["clamped_acc"] - clamp["test_acc"]) * 100
    clamp["clamped_pct"] = clamp["fraction_clamped"] * 100
    paths = []
    for suffix, setting, frame in settings(trials):
        part = clamp[clamp["trial_id"].isin(frame["trial_id"])]
        # γ that never trained sit at their U[0, 1) initialisation: only subsets that train γ
        part = part[part["trainable"].isin(["all", "bn", "bn+output"]) | ~part["trainable"].isin(SUBSET_ORDER)]
        if part.empty:
            continue
        subsets = ordered_subsets(part["trainable"])
        models = model_order(part)
        cmap = plt.get_cmap("viridis")
        colours = {m: cmap(i / max(len(models) - 1, 1) * 0.9) for i, m in enumerate(models)}
        w0, d0 = part["width"].min(), part["depth"].min()
        fig, axes = plt.subplots(1, len(subsets), figsize=(4.0 * len(subsets), 3.6), sharey=True, squeeze=False)
        for ax, subset in zip(axes[0], subsets):
            rows = part[part["trainable"] == subset]
            for model in models:
                r = rows[rows["model"] == model]
                if r.empty:
                    continue
                g = r.groupby("threshold").agg(x=("clamped_pct", "mean"), y=("change", "mean"),
                                               e=("change", "std")).reset_index().fillna(0.0)
                wide = (r["depth"].iloc[0] == d0) and (r["width"].iloc[0] != w0)
                ax.errorbar(g["x"], g["y"], yerr=g["e"], color=colours[model], marker="s" if wide else "o",
                            ms=3.5, capsize=2, linestyle="--" if wide else "-", lw=1.3, label=model)
            ax.axhline(0, color="#999999", lw=0.8)
            ax.set_title(subset_label(subset))
            ax.set_xlabel("γ clamped to 0 (%)")
        axes[0][0].set_ylabel("change in test accuracy (points)")
        titles = {m: model_title(part[part["model"] == m]) for m in models}
        handles = [Line2D([], [], color=colours[m], lw=2, label=titles[m]) for m in models]
        fig.suptitle(_title("Fig. 6: clamping |γ| < t to zero, thresholds t = "
                            + ", ".join(f"{t:g}" for t in sorted(part["threshold"].unique())), setting), fontsize=10)
        _legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "clamp_accuracy" + suffix)
    return paths


# -- Fig. 7: dead ReLUs --------------------------------------------------------------------------
def dead_units(dead: pd.DataFrame) -> pd.DataFrame:
    """Per trial: the unit-weighted fraction of dead units and of dead channels over all layers."""
    d = dead.assign(du=dead["dead_unit_fraction"] * dead["units"], dc=dead["dead_channel_fraction"] * dead["channels"])
    g = d.groupby("trial_id")[["du", "units", "dc", "channels"]].sum()
    return pd.DataFrame({"dead_units": g["du"] / g["units"], "dead_channels": g["dc"] / g["channels"]}).reset_index()


def dead_relu(tables, out: Path) -> list[Path]:
    """Fig. 7: the share of ReLUs that output 0 on more than 99% of test inputs, per unit and
    per channel, against the BN parameter count; and per layer for the deepest network."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "bn_params"))
    if trials.empty or "dead_relu" not in tables:
        return []
    dead = tables["dead_relu"]
    if dead.empty or not {"trial_id", "dead_unit_fraction", "units"} <= set(dead):
        return []
    cols = ["trainable", "model", "depth", "width", "bn_params", "seed"]
    overall = with_trials(dead_units(dead), trials, cols)
    per_layer = with_trials(dead, trials, cols)
    if overall.empty:
        return []
    paths = []
    for suffix, setting, frame in settings(trials):
        part = overall[overall["trial_id"].isin(frame["trial_id"])]
        if part.empty:
            continue
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
            _count_axis(ax)
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
        handles = _subset_handles(subsets) + _series_handles([(k, t) for k, _, t in kinds])
        fig.suptitle(_title("Fig. 7: dead ReLUs (zero on > 99% of test inputs)", setting), fontsize=10)
        _legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "dead_relu" + suffix)
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
    table.to_csv(csv, index=False)
    md.write_text("Table 1: parameters by group (Frankle et al. 2021)\n\n" + _markdown(table))
    return [csv, md]



def finish_gamma_grid(axes, used: int, bins, subsets) -> list:
    """Shared finish of a grid of γ histograms: hide unused panels, one γ range and label for all,
    and the legend handles (initial γ in grey, one colour per trainable subset)."""
    for ax in axes.ravel()[used:]:
        ax.set_visible(False)
    for ax in axes.ravel():
        ax.set_xlim(bins[0], bins[-1])
        ax.set_xlabel("γ", labelpad=1)
    return [Line2D([], [], color="#cccccc", lw=6, label="at initialisation")] + [
        Line2D([], [], color=subset_colour(s), lw=2, label=subset_label(s)) for s in subsets]

FIGURES = {
    "all_vs_all_but_bn": all_vs_all_but_bn,
    "accuracy_vs_depth_width": accuracy_vs_depth_width,
    "accuracy_vs_bn_params": accuracy_vs_bn_params,
    "gamma_distribution": gamma_distribution,
    "gamma_sparsity": gamma_sparsity_figure,
    "clamp_accuracy": clamp_accuracy,
    "dead_relu": dead_relu,
    "table1_params": table1_params,
}
