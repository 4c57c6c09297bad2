"""Figures of Frankle, Schwab & Morcos (2021), "Training BatchNorm and only BatchNorm"."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweeper.analysis.style import done, mean_std, plt, save


def accuracy_vs_bn_params(tables: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    """Fig. 3: test accuracy against the number of BN parameters, one line per trainable subset
    and way of growing (deeper at fixed width, wider at fixed depth); error bars over seeds."""
    trials = done(tables.get("trials"))
    if trials.empty or "bn_params" not in trials:
        return []
    stats = mean_std(trials, ["trainable", "width", "depth", "bn_params"], "test_acc")
    fig, ax = plt.subplots(figsize=(6, 4))
    for (subset, width), group in stats.groupby(["trainable", "width"]):
        group = group.sort_values("bn_params")
        ax.errorbar(
            group["bn_params"], group["mean"],
            yerr=group["std"], marker="o", capsize=3, label=f"{subset}, width {width} (deeper)",
        )
    if stats["width"].nunique() > 1:
        for (subset, depth), group in stats.groupby(["trainable", "depth"]):
            if group["width"].nunique() < 2:
                continue
            group = group.sort_values("bn_params")
            ax.errorbar(group["bn_params"], group["mean"], yerr=group["std"], marker="s",
                        linestyle="--", capsize=3, label=f"{subset}, depth {depth} (wider)")
    ax.set_xscale("log")
    ax.set_xlabel("BatchNorm parameters (γ and β)")
    ax.set_ylabel("test accuracy (top-1)")
    ax.set_title("Accuracy vs BN parameter count: deepening vs widening")
    ax.legend(loc="best", ncols=2)
    return save(fig, out, "accuracy_vs_bn_params")


FIGURES = {
    "accuracy_vs_bn_params": accuracy_vs_bn_params,
}
