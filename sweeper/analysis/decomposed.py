"""Figures for "BN decomposed at initialisation" (project issue 8), from stored tables only.

Every figure function has the signature ``fig(tables, out_dir) -> list[Path]`` and reads
``tables["trials"]`` (one row per trial: every DecomposedSpec field, ``trial_id``, ``status``,
and the trial's summary columns), ``tables["layers"]`` and ``tables["cosine"]`` (each with a
``trial_id`` column). A figure whose data are absent returns ``[]``. Each figure is written as PNG
and PDF. Trials that differ in anything other than (rc, rs, nl) and the seed go to separate files
(one per "setting", e.g. per width); seeds are aggregated into bands.

pandas and matplotlib only (Agg backend): analysis never imports torch.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sweeper.analysis.style import done, save  # noqa: E402
from sweeper.experiments.decomposed.spec import DecomposedSpec  # noqa: E402  (a dataclass: no torch)

EXPERIMENT = DecomposedSpec.experiment  # the experiment name in the trials table
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(DecomposedSpec))
#: the components drawn as separate curves; every other varying field except these makes a setting
COMPONENTS = ("rc", "rs", "nl")
_NOT_SETTINGS = set(COMPONENTS) | {"seed", "record_every", "cosine_layers"}

METRICS = (  # column, axis label, log scale
    ("norm_ratio", "norm ratio  ||outlier|| / ||cluster centre||", True),
    ("outlier_cos", "|cos(outlier, cluster centre)|", False),
    ("cluster_spread", "cluster spread (relative to centre norm)", True),
    ("orthogonality_gap", "orthogonality gap V(H)", True),
    ("mean_cos", "mean pairwise cosine", False),
)

Figure = Callable[[dict[str, pd.DataFrame], Path], list[Path]]


# -- helpers --------------------------------------------------------------------------------------

def _trials(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The decomposed trials with results (status done, components present)."""
    trials = tables.get("trials")
    if trials is None or trials.empty or "trial_id" not in trials.columns:
        return pd.DataFrame()
    if not all(c in trials.columns for c in COMPONENTS):
        return pd.DataFrame()
    t = trials
    if "experiment" in t.columns and (t["experiment"] == EXPERIMENT).any():
        t = t[t["experiment"] == EXPERIMENT]
    t = t.dropna(subset=list(COMPONENTS))
    if "status" in t.columns:
        t = done(t)
    return t.reset_index(drop=True)


def _with_spec(table_name: str, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """tables[table_name] joined with the spec columns of the usable trials (inner join)."""
    trials = _trials(tables)
    table = tables.get(table_name)
    if trials.empty or table is None or table.empty or "trial_id" not in table.columns:
        return pd.DataFrame()
    spec_cols = [c for c in SPEC_FIELDS if c in trials.columns and c not in table.columns]
    return table.merge(trials[["trial_id", *spec_cols]], on="trial_id", how="inner")


def _setting_fields(trials: pd.DataFrame) -> list[str]:
    return [f for f in SPEC_FIELDS
            if f in trials.columns and f not in _NOT_SETTINGS and trials[f].nunique(dropna=False) > 1]


def _settings(df: pd.DataFrame, fields: list[str]):
    """(suffix for file names, title text, sub-frame) per distinct setting."""
    if not fields:
        yield "", "", df
        return
    for key, sub in df.groupby(fields, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        pairs = [f"{f}={_fmt(v)}" for f, v in zip(fields, key)]
        suffix = "__" + re.sub(r"[^A-Za-z0-9_.=-]+", "-", "_".join(pairs))
        yield suffix, ", ".join(pairs), sub


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def component_label(rc, rs, nl) -> str:
    """The name of a (rc, rs, nl) combination as the paper writes it: "RC + RS(std) + relu"."""
    parts = []
    if _truthy(rc):
        parts.append("RC")
    if str(rs) != "none":
        parts.append(f"RS({rs})")
    parts.append("linear" if str(nl) in ("identity", "linear") else str(nl))
    return " + ".join(parts)


def _combos(df: pd.DataFrame) -> list[tuple]:
    keys = df[list(COMPONENTS)].drop_duplicates()
    keys = keys.assign(_rc=keys["rc"].map(_truthy)).sort_values(["_rc", "rs", "nl"], ascending=[False, True, True])
    return [tuple(r) for r in keys[list(COMPONENTS)].itertuples(index=False)]


def _plain_log(ax, axis: str = "y") -> None:
    """Log-axis tick labels as plain numbers (0.2, 15, not 2x10^-1); call after plotting. Minor
    ticks are labelled only when the axis spans less than about one decade."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for name in ("x", "y"):
        if axis not in (name, "both"):
            continue
        a = getattr(ax, f"{name}axis")
        lo, hi = getattr(ax, f"get_{name}lim")()
        ratio = hi / lo if lo > 0 else math.inf
        if 12 <= ratio < 1000:
            a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        a.set_major_formatter(plain)
        a.set_minor_formatter(plain if ratio < 12 else NullFormatter())


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# -- figure 1: each metric versus depth -----------------------------------------------------------

def metrics_vs_depth(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Per setting: one panel per metric versus layer, one curve per (RC, RS, NL) combination;
    line = median over seeds, band = min..max over seeds. The norm-ratio panel marks n - 1."""
    df = _with_spec("layers", tables)
    if df.empty or "layer" not in df.columns:
        return []
    metrics = [m for m in METRICS if m[0] in df.columns]
    if not metrics:
        return []
    fields = _setting_fields(_trials(tables))
    paths: list[Path] = []
    for suffix, title, sub in _settings(df, fields):
        combos = _combos(sub)
        ncols = 3
        nrows = math.ceil((len(metrics) + 1) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.6 * nrows), squeeze=False)
        axes = axes.ravel()
        handles = []
        for color, combo in zip(_colors(len(combos)), combos):
            mask = np.ones(len(sub), dtype=bool)
            for c, v in zip(COMPONENTS, combo):
                mask &= (sub[c] == v).to_numpy()
            part = sub[mask]
            nseeds = part["trial_id"].nunique()
            for ax, (col, _, log) in zip(axes, metrics):
                vals = part[["layer", col]].replace([np.inf, -np.inf], np.nan).dropna()
                if log:
                    vals = vals[vals[col] > 0]
                if vals.empty:
                    continue
                g = vals.groupby("layer")[col]
                stats = pd.DataFrame({"med": g.median(), "lo": g.min(), "hi": g.max()})
                (line,) = ax.plot(stats.index, stats["med"], color=color, lw=1.4,
                                  label=f"{component_label(*combo)}  ({nseeds} trial{'s' if nseeds != 1 else ''})")
                if nseeds > 1:
                    ax.fill_between(stats.index, stats["lo"], stats["hi"], color=color, alpha=0.2, lw=0)
                if col == metrics[0][0]:
                    handles.append(line)
        for ax, (col, label, log) in zip(axes, metrics):
            ax.set_xlabel("layer (depth)")
            ax.set_ylabel(label)
            if log:
                ax.set_yscale("log")
                _plain_log(ax)
            ax.grid(alpha=0.3)
        if "n" in sub.columns and sub["n"].nunique() == 1 and metrics[0][0] == "norm_ratio":
            n = int(sub["n"].iloc[0])
            axes[0].axhline(n - 1, color="k", ls="--", lw=1)
            axes[0].annotate(f"n - 1 = {n - 1}", xy=(0.02, n - 1), xycoords=("axes fraction", "data"),
                             va="bottom", fontsize=8)
        for ax in axes[len(metrics):]:
            ax.axis("off")
        axes[len(metrics)].legend(handles=handles, loc="center", fontsize=9, frameon=False,
                                  title="RC / RS / NL  (line: median over seeds, band: min-max)",
                                  title_fontsize=8)
        head = "BN decomposed at initialisation: geometry of the batch versus depth"
        fig.suptitle(head + (f"\n{title}" if title else ""), fontsize=11)
        fig.tight_layout()
        paths += save(fig, out_dir, "decomposed_metrics" + suffix, dpi=150)
    return paths


# -- figure 2: cosine heat maps -------------------------------------------------------------------

def cosine_heatmaps(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Per setting: rows = (RC, RS, NL) combinations (the lowest seed), columns = recorded layers;
    data points ordered so that the outlier of the deepest recorded layer comes last."""
    df = _with_spec("cosine", tables)
    if df.empty or not {"layer", "i", "j", "cos"} <= set(df.columns):
        return []
    layers_tab = tables.get("layers")
    fields = _setting_fields(_trials(tables))
    paths: list[Path] = []
    for suffix, title, sub in _settings(df, fields):
        combos = _combos(sub)
        depths = sorted(sub["layer"].unique())
        fig, axes = plt.subplots(len(combos), len(depths), squeeze=False, layout="constrained",
                                 figsize=(2.3 * len(depths) + 1.4, 2.3 * len(combos) + 0.8))
        image = None
        for r, combo in enumerate(combos):
            mask = np.ones(len(sub), dtype=bool)
            for c, v in zip(COMPONENTS, combo):
                mask &= (sub[c] == v).to_numpy()
            part = sub[mask]
            by_seed = part.sort_values(["seed", "trial_id"] if "seed" in part.columns else ["trial_id"])
            tid = by_seed["trial_id"].iloc[0]
            part = part[part["trial_id"] == tid]
            n = int(max(part["i"].max(), part["j"].max())) + 1
            order = list(range(n))
            if layers_tab is not None and {"trial_id", "layer", "outlier_index"} <= set(layers_tab.columns):
                lt = layers_tab[layers_tab["trial_id"] == tid]
                if not lt.empty:
                    o = int(lt.sort_values("layer")["outlier_index"].iloc[-1])
                    if 0 <= o < n:
                        order = [k for k in order if k != o] + [o]
            pos = np.empty(n, dtype=int)
            pos[order] = np.arange(n)
            for c, layer in enumerate(depths):
                ax = axes[r, c]
                cell = part[part["layer"] == layer]
                ax.set_xticks([])
                ax.set_yticks([])
                if cell.empty:
                    ax.axis("off")
                    continue
                M = np.full((n, n), np.nan)
                M[pos[cell["i"].to_numpy()], pos[cell["j"].to_numpy()]] = cell["cos"].to_numpy()
                image = ax.imshow(M, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
                if r == 0:
                    ax.set_title(f"layer {layer}", fontsize=9)
                if c == 0:
                    ax.set_ylabel(component_label(*combo), fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity")
        head = "Cosine similarity between the batch's representations (outlier of the last layer shown last)"
        fig.suptitle(head + (f"\n{title}" if title else ""), fontsize=10)
        paths += save(fig, out_dir, "decomposed_cosine" + suffix, dpi=150)
    return paths


# -- figure 3: the orthogonality floor of RS-only linear networks ----------------------------------

def orthogonality_floor(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """RS-only linear networks (rc off, rs on, nl identity): left, V(H) versus layer per width
    (median over seeds); right, the floor (mean V over the last quarter of the layers) versus width,
    log-log, seeds as points, mean ± std, a fitted slope and a 1/sqrt(d) reference line."""
    df = _with_spec("layers", tables)
    need = {"layer", "orthogonality_gap", "rc", "rs", "nl"}
    if df.empty or not need <= set(df.columns):
        return []
    width_col = "width" if "width" in df.columns else "d" if "d" in df.columns else None
    if width_col is None:
        return []
    sel = df[~df["rc"].map(_truthy) & (df["rs"].astype(str) != "none")
             & df["nl"].astype(str).isin(["identity", "linear"])]
    if sel.empty:
        return []
    # the floor per trial: mean gap over the last quarter of its recorded layers
    last = sel.groupby("trial_id")["layer"].transform("max")
    tail = sel[sel["layer"] >= 0.75 * last]
    floor = tail.groupby("trial_id").agg(floor=("orthogonality_gap", "mean"), width=(width_col, "first"),
                                         rs=("rs", "first"))
    trials = _trials(tables)
    group_fields = list(dict.fromkeys(
        [f for f in _setting_fields(trials) if f not in ("width", "depth", "rs")] + ["rs"]))
    extra = [f for f in group_fields if f not in floor.columns and f in trials.columns]
    if extra:
        floor = floor.join(trials.set_index("trial_id")[extra])
    groups = list(floor.groupby(group_fields, sort=True))

    def describe(key) -> str:
        key = key if isinstance(key, tuple) else (key,)
        return ", ".join(f"{f}={_fmt(v)}" for f, v in zip(group_fields, key))

    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11.5, 4.3))
    first = sel[sel["trial_id"].isin(groups[0][1].index)]  # the left panel shows the first group
    widths = sorted(first[width_col].unique())
    wcolors = dict(zip(widths, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(widths)))))
    for w in widths:
        part = first[first[width_col] == w]
        g = part.groupby("layer")["orthogonality_gap"]
        ax_l.plot(g.median().index, g.median(), color=wcolors[w], lw=1.3, label=f"d = {w}")
        if part["trial_id"].nunique() > 1:
            ax_l.fill_between(g.min().index, g.min(), g.max(), color=wcolors[w], alpha=0.15, lw=0)
    ax_l.set_yscale("log")
    _plain_log(ax_l)
    ax_l.set_xlabel("layer (depth)")
    ax_l.set_ylabel("orthogonality gap V(H)")
    ax_l.set_title(f"RS-only linear network ({describe(groups[0][0])}):\nV(H) versus depth, "
                   "median and min-max over seeds", fontsize=9)
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8, ncol=2)

    anchor = None
    all_widths = sorted(floor["width"].unique())
    for color, (key, g) in zip(_colors(len(groups)), groups):
        ax_r.scatter(g["width"], g["floor"], color=color, s=12, alpha=0.45)
        s = g.groupby("width")["floor"].agg(["mean", "std"]).fillna(0.0)
        text = ""
        if len(s) >= 2:
            slope = np.polyfit(np.log(s.index.to_numpy(float)), np.log(s["mean"].to_numpy()), 1)[0]
            text = f"  (fitted slope {slope:+.2f})"
        ax_r.errorbar(s.index, s["mean"], yerr=s["std"], color=color, marker="o", ms=4, capsize=3,
                      lw=1.2, label=describe(key) + text)
        if anchor is None:
            anchor = (float(s.index[0]), float(s["mean"].iloc[0]))
    if anchor is not None:
        d = np.geomspace(min(all_widths), max(all_widths), 50)
        ax_r.plot(d, anchor[1] * np.sqrt(anchor[0] / d), "k--", lw=1, label=r"$\propto 1/\sqrt{d}$")
    ax_r.set_xscale("log")
    ax_r.set_yscale("log")
    _plain_log(ax_r, "both")
    ax_r.set_xticks(all_widths)
    ax_r.xaxis.set_minor_formatter(NullFormatter())
    ax_r.set_xlabel("width d")
    ax_r.set_ylabel("floor of V(H): mean over last 25% of layers")
    ax_r.set_title("Orthogonality floor versus width (points: seeds)", fontsize=10)
    ax_r.grid(alpha=0.3, which="both")
    ax_r.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, out_dir, "orthogonality_floor", dpi=150)


FIGURES: dict[str, Figure] = {
    "decomposed_metrics": metrics_vs_depth,
    "decomposed_cosine": cosine_heatmaps,
    "orthogonality_floor": orthogonality_floor,
}
