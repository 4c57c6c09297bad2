"""Conventions shared by every figure of Frankle et al. (colours, labels, subset order), and the
selection and splitting of `train` trials into settings and series (see the package docstring)."""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sweeper.analysis.digest import SPARSITY_THRESHOLDS  # noqa: F401 - the figures' thresholds, stored by compaction
from sweeper.analysis.join import among
from sweeper.analysis.style import done, mean_std, plt
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



def per_setting(trials: pd.DataFrame, table: pd.DataFrame, keep=None):
    """For each setting of `settings(trials)`: (suffix, title text, its trials, `table`'s rows of
    those trials), narrowed by `keep(rows, trials)` when given; settings left with no rows are
    skipped, since every figure draws one file per setting that has data."""
    for suffix, setting, frame in settings(trials):
        part = table[among(table["trial_id"], frame["trial_id"])]
        if keep is not None:
            part = keep(part, frame)
        if not part.empty:
            yield suffix, setting, frame, part

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


def title(base: str, setting: str) -> str:
    return f"{base}\n{setting}" if setting else base


def log2_axis(ax, values) -> None:
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


def count_axis(ax) -> None:
    """A log x-axis of parameter counts with plain labels (336, 1k, 8.2k)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def subset_handles(subsets: list[str]) -> list[Line2D]:
    return [Line2D([], [], color=subset_colour(s), marker="o", lw=2, label=subset_label(s)) for s in subsets]


def series_handles(kinds: list[tuple[str, str]]) -> list[Line2D]:
    return [
        Line2D([], [], color="#555555", linestyle=SERIES_STYLE[k], marker=SERIES_MARKER[k], label=text)
        for k, text in kinds
    ]


def legend_outside(fig, handles: list[Line2D]) -> None:
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)


IMAGENET = ("imagenet", "imagenet224")  # datasets whose accuracies the paper gives as top-1 and top-5


def top5_recorded(trials: pd.DataFrame) -> bool:
    """Whether to draw top-5 beside top-1: ImageNet trials (the paper reports both there; on the
    10-class sets top-5 says little) that recorded it."""
    return ("dataset" in trials and "test_top5" in trials and trials["dataset"].isin(IMAGENET).all()
            and trials["test_top5"].notna().any())


def accuracy_panel(ax, frame: pd.DataFrame, x: str, subsets: list[str], style: str, marker: str,
                   value: str = "test_acc") -> None:
    for subset in subsets:
        rows = frame[frame["trainable"] == subset]
        if rows.empty:
            continue
        stats = mean_std(rows.assign(acc=rows[value] * 100), [x], "acc").sort_values(x)
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"], color=subset_colour(subset), linestyle=style,
                    marker=marker, ms=4, capsize=3, lw=1.5)


def chance_line(ax, trials: pd.DataFrame) -> None:
    level = chance(trials)
    if level is not None:
        ax.axhline(level, color="#999999", linestyle=":", lw=1)
        ax.annotate("chance", (0.01, level), xycoords=("axes fraction", "data"), fontsize=7, color="#777777",
                    va="bottom")



def series_grid(frame: pd.DataFrame, panels: list[tuple[str, pd.DataFrame, str]], line_by: str, lines: list,
                colour, label, ylabel: str) -> tuple:
    """The paper's way of drawing a measure of deeper and wider networks: one column per series
    (deeper: against depth at the smallest width; wider: against width at the smallest depth),
    one row per panel (title, rows, value column), one line per value of `line_by` (in the order
    `lines`), mean and standard deviation over seeds. Returns (figure, axes, the plotted points)."""
    kinds = series(frame)
    fig, axes = plt.subplots(len(panels), len(kinds), figsize=(4.2 * len(kinds), 3.1 * len(panels)),
                             squeeze=False, sharey="row")
    points = []
    for i, (name, rows, value) in enumerate(panels):
        for j, (kind, members, _) in enumerate(kinds):
            ax, x = axes[i][j], ("depth" if kind == "deeper" else "width")
            part = rows[among(rows["trial_id"], members["trial_id"])]
            for key in lines:
                r = part[part[line_by] == key]
                if r.empty:
                    continue
                stats = mean_std(r, [x], value).sort_values(x)
                ax.errorbar(stats[x], stats["mean"], yerr=stats["std"], color=colour(key), linestyle=SERIES_STYLE[kind],
                            marker=SERIES_MARKER[kind], ms=4, capsize=3, lw=1.4, label=label(key))
                points += [{"panel": name, "series": kind, "x_field": x, "x": s[x], line_by: key, "mean": s["mean"],
                            "std": s["std"], "seeds": s["count"]} for _, s in stats.iterrows()]
            log2_axis(ax, members[x])
            fixed = f"width {members['width'].iloc[0]}" if x == "depth" else f"depth {members['depth'].iloc[0]}"
            ax.set_xlabel(f"{x}  (at {fixed})")
            ax.set_title(name if len(kinds) == 1 else f"{name}: {kind}")
        axes[i][0].set_ylabel(ylabel)
    return fig, axes, pd.DataFrame(points)


def threshold_colours(thresholds) -> dict:
    """One colour per threshold, light (small t) to dark (large t)."""
    cmap = plt.get_cmap("viridis")
    thresholds = list(thresholds)
    return {t: cmap(0.85 - 0.8 * i / max(len(thresholds) - 1, 1)) for i, t in enumerate(thresholds)}
