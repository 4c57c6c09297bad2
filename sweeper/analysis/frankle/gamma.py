"""Figs. 4-6 of Frankle et al.: γ distributions, γ sparsity, and accuracy with small γ clamped to zero."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from sweeper.analysis.frankle.common import (
    per_setting,
    SERIES_MARKER,
    SERIES_STYLE,
    SPARSITY_THRESHOLDS,
    SUBSET_ORDER,
    count_axis,
    legend_outside,
    model_order,
    model_title,
    ordered_subsets,
    series,
    series_grid,
    series_handles,
    subset_colour,
    subset_handles,
    subset_label,
    threshold_colours,
    title,
    train_trials,
)
from sweeper.analysis.join import among, columns, per_trial_means, with_trials
from sweeper.analysis.frankle.distributions import binned, bn_summary, trained_gamma_subsets
from sweeper.analysis.reduce import weighted_hist
from sweeper.analysis.style import mean_std, plt, save, save_csv


# -- Fig. 4: γ distributions ---------------------------------------------------------------------
GAMMA_COLUMNS = ("trial_id", "gamma", "gamma_init")  # all that the γ figures read of the `bn` table


def gamma_table(tables, trials: pd.DataFrame) -> pd.DataFrame:
    """The `bn` rows (trial_id, γ, initial γ) of the given trials; empty when there are none."""
    if trials.empty or "bn" not in tables:
        return pd.DataFrame()
    bn = columns(tables, "bn", GAMMA_COLUMNS)
    if bn.empty or not set(GAMMA_COLUMNS) <= set(bn):
        return pd.DataFrame()
    keep = among(bn["trial_id"], trials["trial_id"])
    return bn if keep.all() else bn[keep].reset_index(drop=True)  # no 8M-row copy when all are wanted


def gamma_moved(bn: pd.DataFrame) -> pd.Index:
    """The trials whose γ moved in training (the others still show their initialisation)."""
    moved = per_trial_means(bn["trial_id"], {"moved": (bn["gamma"] != bn["gamma_init"]).to_numpy()})["moved"]
    return moved.index[moved > 0]


def gamma_distribution(tables, out: Path) -> list[Path]:
    """Fig. 4: the distribution of γ after training, one panel per network, one colour per
    subset whose γ trains, with the initial distribution in grey; channels pooled over layers
    and seeds. Drawn from per-trial histograms streamed from the `bn` table, in the passes it
    shares with the β figure (sweeper.analysis.frankle.distributions)."""
    panels = binned(tables).get("gamma")
    if panels is None:
        return []
    summary = panels.summary
    paths = []
    for i, ((suffix, setting, frame, subsets), edges) in enumerate(zip(panels.plans, panels.bins)):
        models = model_order(frame)[:16]
        ncols = min(4, len(models))
        nrows = math.ceil(len(models) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), squeeze=False)
        for ax, model in zip(axes.ravel(), models):
            rows = frame[frame["model"] == model]
            init = panels.histogram(i, "gamma_init", rows.loc[rows["trainable"] == subsets[0], "trial_id"])
            weighted_hist(ax, init, edges, density=True, color="#cccccc", label="at initialisation")
            for subset in subsets:
                members = rows.loc[rows["trainable"] == subset, "trial_id"]
                if summary.loc[among(summary.index, members), "n"].sum():
                    weighted_hist(ax, panels.histogram(i, "gamma", members), edges, density=True,
                                  histtype="step", lw=1.6, color=subset_colour(subset))
            ax.axvline(0, color="#999999", lw=0.8, linestyle=":")
            ax.set_title(model_title(frame[frame["model"] == model]), fontsize=9)
            ax.set_yticks([])
        handles = finish_gamma_grid(axes, len(models), edges, subsets)
        fig.suptitle(title("Fig. 4: distribution of γ after training (density)", setting), fontsize=10)
        legend_outside(fig, handles)
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


def summary_sparsity(summary: pd.DataFrame, thresholds=SPARSITY_THRESHOLDS) -> pd.DataFrame:
    """`gamma_sparsity` from the per-trial counts of the streamed summary (the same numbers)."""
    thresholds = [float(t) for t in thresholds]
    k, n = len(thresholds), summary["n"].to_numpy()
    return pd.DataFrame({
        "trial_id": np.repeat(summary.index.to_numpy(dtype=object), k),
        "threshold": np.tile(thresholds, len(summary)),
        "channels": np.repeat(n, k),
        "fraction": (summary[[f"below{i}" for i in range(k)]].to_numpy() / n[:, None]).ravel(),
        "fraction_init": (summary[[f"below_init{i}" for i in range(k)]].to_numpy() / n[:, None]).ravel(),
    })


def sparsity_frame(tables) -> tuple[pd.DataFrame, pd.DataFrame, pd.Index]:
    """(trials, per-trial sparsity joined to its trial's fields, trials whose γ moved), from the
    per-trial counts streamed from the `bn` table (sweeper.analysis.reduce)."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "bn_params"))
    summary = bn_summary(tables, trials, ("gamma_moved", "below0", "below_init0"))
    if summary.empty:
        return trials, pd.DataFrame(), pd.Index([])
    sparsity = with_trials(summary_sparsity(summary), trials, ["trainable", "model", "depth", "width", "bn_params",
                                                               "seed"])
    return trials, sparsity, summary.index[summary["gamma_moved"] > 0]


def _threshold_grid(part, value: str, label, ylabel: str):
    """Figs. 5 and 6's grid: one row per trainable subset, `value` against depth and against width,
    one line per γ threshold. Returns (figure, axes, thresholds, their colours)."""
    thresholds = sorted(part["threshold"].unique())
    colours = threshold_colours(thresholds)
    panels = [(subset_label(s), part[part["trainable"] == s], value) for s in ordered_subsets(part["trainable"])]
    fig, axes, _ = series_grid(part, panels, "threshold", thresholds, colours.get, label, ylabel)
    return fig, axes, thresholds, colours


def _gamma_trained(moved):
    """per_setting's `keep` for Fig. 5: only the subsets whose γ moved in training."""
    def keep(part, frame):
        return part[part["trainable"].isin(trained_gamma_subsets(frame, moved))]
    return keep


def gamma_sparsity_figure(tables, out: Path) -> list[Path]:
    """Fig. 5 as the paper draws it: the share of |γ| below each threshold against depth (deeper
    series) and against width (wider series), one row per subset whose γ trains, one line per
    threshold; dotted: the same share at initialisation. The per-trial numbers go to a CSV."""
    trials, sparsity, moved = sparsity_frame(tables)
    if sparsity.empty:
        return []
    paths = []
    for suffix, setting, frame, part in per_setting(trials, sparsity, _gamma_trained(moved)):
        part = part.assign(pct=part["fraction"] * 100)
        fig, axes, thresholds, colours = _threshold_grid(part, "pct", lambda t: f"|γ| < {t:g}", "share of γ (%)")
        for ax in axes.ravel():
            for t in thresholds:  # the share at initialisation, the same for every network
                at = part.loc[part["threshold"] == t, "fraction_init"].mean() * 100
                ax.axhline(at, color=colours[t], linestyle=":", lw=0.9)
        handles = [Line2D([], [], color=colours[t], marker="o", lw=2, label=f"|γ| < {t:g}") for t in thresholds]
        handles.append(Line2D([], [], color="#999999", linestyle=":", label="at initialisation"))
        fig.suptitle(title("Fig. 5: share of γ near zero after training, deeper and wider", setting), fontsize=10)
        legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "gamma_sparsity" + suffix)
        csv = out / f"gamma_sparsity{suffix}.csv"
        save_csv(part.drop(columns="pct").sort_values(["trainable", "bn_params", "seed", "threshold"]), csv)
        paths.append(csv)
    return paths


def gamma_sparsity_vs_bn_params(tables, out: Path) -> list[Path]:
    """Fig. 5 against the BN parameter count (an extra): one panel per threshold, one colour per
    subset, solid deeper, dashed wider; dotted grey: the same fraction at initialisation."""
    trials, sparsity, moved = sparsity_frame(tables)
    if sparsity.empty:
        return []
    paths = []
    for suffix, setting, frame, part in per_setting(trials, sparsity, _gamma_trained(moved)):
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
            count_axis(ax)
            ax.set_title(f"|γ| < {t:g}")
            ax.set_xlabel("BN parameters")
        axes[0][0].set_ylabel("share of γ (%)")
        handles = subset_handles(subsets) + series_handles([(k, t) for k, _, t in kinds])
        handles.append(Line2D([], [], color="#999999", linestyle=":", label="at initialisation"))
        fig.suptitle(title("Fig. 5 (extra): share of γ near zero against the BN parameter count", setting),
                     fontsize=10)
        legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "gamma_sparsity_vs_bn_params" + suffix)
    return paths


# -- Fig. 6: clamping small γ to zero -------------------------------------------------------------
def clamp_frame(tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, the clamp table joined to its trials): `change` is the clamped accuracy minus the
    trial's own, in points; `clamped_pct` the share of γ clamped."""
    trials = train_trials(tables, need=("trainable", "depth", "width", "test_acc", "bn_params"))
    if trials.empty or "clamp" not in tables:
        return trials, pd.DataFrame()
    clamp = tables["clamp"]
    if clamp.empty or not {"trial_id", "threshold", "fraction_clamped", "test_acc"} <= set(clamp):
        return trials, pd.DataFrame()
    clamp = with_trials(clamp.rename(columns={"test_acc": "clamped_acc"}), trials,
                        ["trainable", "model", "depth", "width", "bn_params", "seed", "test_acc"])
    if clamp.empty:
        return trials, clamp
    clamp["change"] = (clamp["clamped_acc"] - clamp["test_acc"]) * 100
    clamp["clamped_pct"] = clamp["fraction_clamped"] * 100
    return trials, clamp


def _trains_gamma(part: pd.DataFrame) -> pd.DataFrame:
    """γ that never trained sit at their U[0, 1) initialisation: only subsets that train γ."""
    return part[part["trainable"].isin(["all", "bn", "bn+output"]) | ~part["trainable"].isin(SUBSET_ORDER)]


def clamp_accuracy(tables, out: Path) -> list[Path]:
    """Fig. 6 as the paper draws it: the change in test accuracy when every γ with |γ| < t is
    set to 0, against depth (deeper series) and width (wider series), one line per threshold t,
    one row per subset whose γ trains."""
    trials, clamp = clamp_frame(tables)
    if clamp.empty:
        return []
    paths = []
    def clamped(part, frame):  # t = 0 clamps nothing: it is the trial's own accuracy
        part = _trains_gamma(part)
        return part[part["threshold"] > 0]

    for suffix, setting, frame, part in per_setting(trials, clamp, clamped):
        fig, axes, thresholds, colours = _threshold_grid(part, "change", lambda t: f"t = {t:g}",
                                                         "change in test accuracy (points)")
        for ax in axes.ravel():
            ax.axhline(0, color="#999999", lw=0.8)
        handles = [Line2D([], [], color=colours[t], marker="o", lw=2, label=f"|γ| < {t:g} set to 0") for t in thresholds]
        fig.suptitle(title("Fig. 6: accuracy after clamping small γ to zero, deeper and wider", setting), fontsize=10)
        legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "clamp_accuracy" + suffix)
    return paths


def clamp_accuracy_vs_fraction(tables, out: Path) -> list[Path]:
    """Fig. 6 against the share of γ clamped (an extra): the change in test accuracy when every
    γ with |γ| < t is set to 0; one panel per subset whose γ trains, one line per network."""
    trials, clamp = clamp_frame(tables)
    if clamp.empty:
        return []
    paths = []
    for suffix, setting, frame, part in per_setting(trials, clamp, lambda part, frame: _trains_gamma(part)):
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
        fig.suptitle(title("Fig. 6 (extra): clamping |γ| < t to zero, thresholds t = "
                            + ", ".join(f"{t:g}" for t in sorted(part["threshold"].unique())), setting), fontsize=10)
        legend_outside(fig, handles)
        fig.tight_layout()
        paths += save(fig, out, "clamp_accuracy_vs_fraction" + suffix)
    return paths


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
