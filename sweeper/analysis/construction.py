"""Figures for Burkholz's construction (sweeper.experiments.construction), read from the trials
table only.

Every figure function takes ``tables`` (``tables["trials"]``: one row per trial with every spec
field, ``trial_id``, ``status`` and the row columns of the construction's run) and an output
folder, writes PNG and PDF, and returns the paths it wrote ([] when its data are absent). Seeds are
averaged: points are means, error bars one standard deviation across seeds (on log axes the lower
bar is clipped above zero). pandas + matplotlib only; no pyplot state (Agg canvas per figure).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sweeper.analysis.style import save

# Spec fields that can tell series apart (seed and width_ratio are the averaging and x axes).
SERIES_FIELDS = ("target", "activation", "source_depth", "output_gamma", "weight_init", "hidden", "hidden_layers",
                 "cnn_channels", "kernel_size", "dataset", "train_size", "dtype", "solver", "refit_output",
                 "sgd_objective", "sgd_optimizer", "sgd_epochs", "sgd_lr", "shift_margin", "linear_scale")
X = "width_ratio"
X_LABEL = "BN width per target weight, D·m / P"
THRESHOLD_LABEL = "D·m = P"
TINY = 1e-18


def _trials(tables: dict[str, pd.DataFrame], needed: tuple[str, ...]) -> pd.DataFrame | None:
    """The finished trials with every `needed` column present and finite, or None."""
    df = tables.get("trials")
    if df is None or len(df) == 0 or any(c not in df.columns for c in needed):
        return None
    if "status" in df.columns:
        df = df[df["status"] == "done"]
    df = df.copy()
    for c in needed:
        if c not in SERIES_FIELDS:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.replace([np.inf, -np.inf], np.nan).dropna(subset=list(needed))
    return df if len(df) else None


def _series(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    return [c for c in SERIES_FIELDS if c in df.columns and c not in exclude and df[c].nunique(dropna=False) > 1]


def _label(keys: list[str], values) -> str:
    if not keys:
        return ""
    values = values if isinstance(values, tuple) else (values,)
    short = {"source_depth": "depth"}
    return ", ".join(f"{short.get(k, k)}={v}" if k != "activation" else str(v) for k, v in zip(keys, values))


def _groups(df: pd.DataFrame, keys: list[str]):
    if not keys:
        yield "", df
        return
    for values, sub in df.groupby(keys, sort=True, dropna=False):
        yield _label(keys, values), sub


def _agg(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    g = df.groupby(x)[y]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0).fillna(0.0), "n": g.size()})
    return out.reset_index().sort_values(x)


def _plot(ax, df: pd.DataFrame, x: str, y: str, label: str, log: bool, **style) -> None:
    a = _agg(df, x, y)
    mean, std = a["mean"].to_numpy(float), a["std"].to_numpy(float)
    if log:
        mean = np.maximum(mean, TINY)
        lower = np.minimum(std, mean * (1 - 1e-3))
        yerr = np.vstack([lower, std])
    else:
        yerr = std
    ax.errorbar(a[x].to_numpy(float), mean, yerr=yerr, marker=style.pop("marker", "o"), ms=4, capsize=2,
                label=label or None, **style)


EXPECTED = "expected_rel_error"
EXPECTED_LABEL = "expected below the threshold, sqrt(1 - dof/P) (dashed)"


def _expected(ax, df: pd.DataFrame, x: str, color: str) -> bool:
    """The error to expect below the threshold (the trials' expected_rel_error, worst layer), dashed
    in the series' colour; nothing where it is 0 (at and above the threshold) or absent."""
    if EXPECTED not in df.columns:
        return False
    sub = df.assign(**{EXPECTED: pd.to_numeric(df[EXPECTED], errors="coerce")})
    sub = sub[sub[EXPECTED] > 0]
    if not len(sub):
        return False
    a = _agg(sub, x, EXPECTED)
    ax.plot(a[x].to_numpy(float), a["mean"].to_numpy(float), color=color, ls="--", lw=1)
    return True


def _threshold(ax, x: float = 1.0, label: str = THRESHOLD_LABEL) -> None:
    ax.axvline(x, color="0.4", ls=":", lw=1, label=label)


def _new(ncols: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(5.2 * ncols, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _legend(ax) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8)


def construction_error(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Relative logit error and test accuracy of the constructed network versus m / P."""
    df = _trials(tables, (X, "relative_error", "test_acc"))
    if df is None:
        return []
    keys = _series(df)
    fig, (ax_err, ax_acc) = _new(2)
    colors, expected = iter(f"C{i % 10}" for i in range(1000)), False
    for label, sub in _groups(df, keys):
        c = next(colors)
        _plot(ax_err, sub, X, "relative_error", label, log=True, color=c)
        expected |= _expected(ax_err, sub, X, c)
        _plot(ax_acc, sub, X, "test_acc", label, log=False, color=c)
    if expected:
        ax_err.plot([], [], color="0.3", ls="--", lw=1, label=EXPECTED_LABEL)
    if "target_test_acc" in df.columns and df["target_test_acc"].notna().any():
        _plot(ax_acc, df.dropna(subset=["target_test_acc"]), X, "target_test_acc", "target", log=False,
              color="0.2", ls="--", marker="")
    for ax in (ax_err, ax_acc):
        _threshold(ax)
        ax.set_xlabel(X_LABEL)
        _legend(ax)
    ax_err.set_yscale("log")
    ax_err.set_ylabel("relative error of logits, ||source - target|| / ||target||")
    ax_acc.set_ylabel("test accuracy")
    ax_err.set_title("constructed network versus target")
    ax_acc.set_title("test accuracy")
    return save(fig, out_dir, "construction_error", dpi=150, pdf_dpi=150, tight=False)


def construction_condition(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Condition number of the scale equations (worst target layer) versus m / P."""
    df = _trials(tables, (X, "condition_number"))
    if df is None:
        return []
    df = df[df["condition_number"] > 0]
    if not len(df):
        return []
    keys = _series(df, exclude=("activation",) if "activation" in df.columns else ())
    fig, (ax,) = _new(1)
    for label, sub in _groups(df, keys):
        _plot(ax, sub, X, "condition_number", label, log=True)
    _threshold(ax)
    ax.set_yscale("log")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel("condition number σ_max / σ_min")
    ax.set_title("conditioning of the BN-scale equations")
    _legend(ax)
    return save(fig, out_dir, "construction_condition", dpi=150, pdf_dpi=150, tight=False)


def construction_vs_sgd(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Construction (solid) versus BN-only SGD on the same random network (dashed)."""
    need = (X, "test_acc", "sgd_test_acc", "relative_error", "sgd_relative_error")
    df = _trials(tables, need)
    if df is None:
        return []
    keys = _series(df)
    fig, (ax_acc, ax_err) = _new(2)
    colors = iter(f"C{i % 10}" for i in range(1000))
    for label, sub in _groups(df, keys):
        c = next(colors)
        _plot(ax_acc, sub, X, "test_acc", label or "construction", log=False, color=c)
        _plot(ax_acc, sub, X, "sgd_test_acc", "", log=False, color=c, ls="--", marker="s")
        _plot(ax_err, sub, X, "relative_error", "", log=True, color=c)
        _plot(ax_err, sub, X, "sgd_relative_error", "", log=True, color=c, ls="--", marker="s")
    for ax in (ax_acc, ax_err):
        _threshold(ax)
        ax.set_xlabel(X_LABEL)
    ax_err.plot([], [], color="0.3", ls="-", marker="o", label="construction")
    ax_err.plot([], [], color="0.3", ls="--", marker="s", label="BN-only SGD, same random network")
    ax_acc.legend(fontsize=8, loc="lower right")
    ax_err.legend(fontsize=8, loc="center right")
    ax_acc.set_ylabel("test accuracy")
    ax_err.set_yscale("log")
    ax_err.set_ylabel("relative error of logits to the target")
    ax_acc.set_title("construction versus BN-only training")
    ax_err.set_title("distance to the target network")
    return save(fig, out_dir, "construction_vs_sgd", dpi=150, pdf_dpi=150, tight=False)


def depth_width_tradeoff(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Error versus total BN width per target weight (D * m / P), one line per source depth D."""
    df = _trials(tables, (X, "source_depth", "relative_error"))
    if df is None:
        return []
    x = "m_over_P" if "m_over_P" in df.columns and df["m_over_P"].notna().all() else X
    if x == "m_over_P":  # the realised ratio varies in the last digits with rounding: group by the spec's
        df = df.assign(m_over_P=df.groupby([X, "source_depth"])["m_over_P"].transform("mean"))
    keys = ["source_depth"] + _series(df, exclude=("source_depth",))
    has_res = "weight_residual" in df.columns and df["weight_residual"].notna().any()
    fig, axes = _new(2 if has_res else 1)
    colors, expected = iter(f"C{i % 10}" for i in range(1000)), False
    for label, sub in _groups(df, keys):
        c = next(colors)
        _plot(axes[0], sub, x, "relative_error", label, log=True, color=c)
        if has_res:  # the expectation is about the weight residual: drawn beside it
            _plot(axes[1], sub.dropna(subset=["weight_residual"]), x, "weight_residual", label, log=True, color=c)
            expected |= _expected(axes[1], sub, x, c)
    if expected:
        axes[1].plot([], [], color="0.3", ls="--", lw=1, label=EXPECTED_LABEL)
    for ax in axes:
        _threshold(ax)
        ax.set_yscale("log")
        ax.set_xlabel("total BN width per target weight, D·m / P")
        _legend(ax)
    axes[0].set_ylabel("relative error of logits")
    axes[0].set_title("depth for width: network error")
    if has_res:
        axes[1].set_ylabel("relative residual ||F(γ) - W|| / ||W|| (worst layer)")
        axes[1].set_title("depth for width: scale equations (float64)")
    return save(fig, out_dir, "depth_width_tradeoff", dpi=150, pdf_dpi=150, tight=False)


def fig(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """All construction figures."""
    return [p for f in FIGURES.values() for p in f(tables, out_dir)]


FIGURES: dict[str, Callable[[dict[str, pd.DataFrame], Path], list[Path]]] = {
    "construction_error": construction_error,
    "construction_condition": construction_condition,
    "construction_vs_sgd": construction_vs_sgd,
    "depth_width_tradeoff": depth_width_tradeoff,
}
