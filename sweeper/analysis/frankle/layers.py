"""What the `bn` table records beyond Figs. 4-6: the distribution of β after training (the
companion of Fig. 4), and γ layer by layer (by stage and block), for each network."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

from sweeper.analysis.frankle.common import (
    SPARSITY_THRESHOLDS,
    per_setting,
    legend_outside,
    model_order,
    model_title,
    ordered_subsets,
    subset_colour,
    subset_handles,
    title,
    train_trials,
)
from sweeper.analysis.frankle.distributions import binned
from sweeper.analysis.join import with_trials
from sweeper.analysis.digest import gamma_layers as streamed_layers
from sweeper.analysis.reduce import weighted_hist
from sweeper.analysis.style import plt, save, save_csv


def _grid(n: int) -> tuple:
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes


# -- β after training ----------------------------------------------------------------------------
def beta_distribution(tables, out: Path) -> list[Path]:
    """The distribution of β after training, one panel per network, one colour per subset whose
    β trains (β starts at 0, marked; a subset that leaves β at its start is not drawn)."""
    panels = binned(tables).get("beta")  # in the passes it shares with Fig. 4 (frankle.distributions)
    if panels is None:
        return []
    paths = []
    for i, ((suffix, setting, frame, part), edges) in enumerate(zip(panels.plans, panels.bins)):
        subsets = ordered_subsets(part["trainable"].astype(str))
        models = [m for m in model_order(frame) if m in set(part["model"].astype(str))][:16]
        fig, axes = _grid(len(models))
        for ax, model in zip(axes.ravel(), models):
            rows = part[part["model"] == model]
            for subset in subsets:
                members = rows.loc[rows["trainable"] == subset, "trial_id"]
                if len(members):
                    weighted_hist(ax, panels.histogram(i, "beta", members), edges, density=True,
                                  histtype="step", lw=1.6, color=subset_colour(subset))
            ax.axvline(0, color="#999999", lw=0.8, linestyle=":")
            ax.set_title(model_title(frame[frame["model"] == model]), fontsize=9)
            ax.set_xlabel("β", labelpad=1)
            ax.set_yticks([])
        handles = [Line2D([], [], color="#999999", linestyle=":", label="at initialisation (β = 0)")]
        fig.suptitle(title("Distribution of β after training (density)", setting), fontsize=10)
        legend_outside(fig, handles + subset_handles(subsets))
        fig.tight_layout()
        paths += save(fig, out, "beta_distribution" + suffix)
    return paths


# -- γ layer by layer ----------------------------------------------------------------------------
def gamma_layers(bn: pd.DataFrame) -> pd.DataFrame:
    """Per trial and BN layer: the mean |γ| over its channels, and the share with |γ| < 0.05, from
    `bn` rows in memory (the figure streams the same numbers: sweeper.analysis.digest.gamma_layers)."""
    g = bn.assign(abs_gamma=bn["gamma"].abs(), small=bn["gamma"].abs() < 0.05)
    # grouped by (trial, layer index) alone: a layer's name, stage, block and role follow from its
    # index, so they are taken from its first row instead of hashed as keys (8 million rows of
    # 1,000 trials: about 3 s, against 4 s with them as keys and 7 s with integer bincounts)
    named = {k: (k, "first") for k in ("layer", "stage", "block", "role") if k in bn}
    out = g.groupby(["trial_id", "layer_index"], observed=True, sort=True).agg(
        **named, mean_abs_gamma=("abs_gamma", "mean"), small_share=("small", "mean"),
        channels=("gamma", "size")).reset_index()
    out["trial_id"] = out["trial_id"].astype(str)
    return out


def gamma_by_layer(tables, out: Path) -> list[Path]:
    """γ layer by layer: for each network, the mean |γ| of each BN layer from input to output
    (mean and spread over seeds), one line per trainable subset; dotted lines mark where a stage
    begins. The numbers go to a CSV, one row per trial and layer."""
    trials = train_trials(tables)
    if trials.empty or "bn" not in tables:
        return []
    layers = streamed_layers(tables, SPARSITY_THRESHOLDS)  # in the pass of the γ summary (analysis.digest)
    if layers.empty:
        return []
    layers = with_trials(layers, trials, ["trainable", "model", "seed"])  # text as categoricals: 2M rows at 10k trials
    if layers.empty:
        return []
    paths = []
    for suffix, setting, frame, part in per_setting(trials, layers):
        subsets = ordered_subsets(part["trainable"].unique())
        present = set(part["model"].unique())  # 2 M rows at 10,000 trials: once, not per model
        models = [m for m in model_order(frame) if m in present][:16]
        fig, axes = _grid(len(models))
        for ax, model in zip(axes.ravel(), models):
            rows = part[part["model"] == model]
            for subset in subsets:
                r = rows[rows["trainable"] == subset]
                if r.empty:
                    continue
                s = r.groupby("layer_index")["mean_abs_gamma"].agg(["mean", "std"]).fillna(0.0).reset_index()
                ax.errorbar(s["layer_index"], s["mean"], yerr=s["std"], color=subset_colour(subset), marker=".",
                            ms=3, lw=1.2, capsize=1.5)
            # each stage's first layer, but the first stage's
            starts = sorted(rows.groupby("stage", observed=True)["layer_index"].min())[1:] if "stage" in rows else []
            for first in starts:
                ax.axvline(first - 0.5, color="#999999", lw=0.8, linestyle=":")
            ax.set_title(model_title(frame[frame["model"] == model]), fontsize=9)
            ax.set_xlabel("BN layer (input to output)", labelpad=1)
            ax.set_ylabel("mean |γ|")
        fig.suptitle(title("γ by layer: mean |γ| of each BN layer (dotted: a new stage)", setting), fontsize=10)
        legend_outside(fig, subset_handles(subsets))
        fig.tight_layout()
        paths += save(fig, out, "gamma_by_layer" + suffix)
        csv = out / f"gamma_by_layer{suffix}.csv"
        save_csv(part.sort_values(["model", "trainable", "seed", "layer_index"]), csv)
        paths.append(csv)
    return paths
