"""Analysis: figures and tables redrawn from the Parquet store alone (pandas + matplotlib; this
package never imports torch, so a notebook or a nightly job redraws without the training stack).

FIGURES is the figure registry, filled from the `FIGURES` dict of each analysis module that an
experiment kind lists as its `figure_modules` (sweeper.experiments; its definitions import no
torch): name -> draw(tables, out_dir) -> list of written files. `tables` maps table names to DataFrames
and loads each on first access (`sweeper.analysis.join.columns` reads only some columns of a big
one, such as the γ columns of `bn`); a figure returns [] when the store has no data for it (it is
then reported as skipped).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import pandas as pd

from sweeper.errors import SweeperError
from sweeper.registry import Registry

Draw = Callable[[dict[str, pd.DataFrame], Path], list[Path]]

FIGURES: Registry[Draw] = Registry("figure")
_loaded = False


def figure_modules() -> list[str]:
    """One module per paper or topic, each defining FIGURES = {"name": draw_function, ...}: those
    the experiment kinds declare."""
    from sweeper.experiments import EXPERIMENTS

    return list(dict.fromkeys(m for kind in EXPERIMENTS for m in EXPERIMENTS[kind].figure_modules))


def figures() -> Registry[Draw]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in figure_modules():
            for name, draw in importlib.import_module(module).FIGURES.items():
                FIGURES.add(name, draw)
    return FIGURES


def check_figures(names) -> None:
    if not isinstance(names, (list, tuple)):
        raise SweeperError(f"must be a list of figure names, got {names!r}", "figures")
    for name in names:
        try:
            figures().canonical(name)
        except SweeperError as e:
            raise e.at("figures") from None
