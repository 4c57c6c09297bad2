"""Analysis: figures and tables redrawn from the Parquet store alone (pandas + matplotlib; this
package never imports torch, so a notebook or a nightly job redraws without the training stack).

FIGURES is the figure registry: name -> Figure(draw, tables). `draw` takes the study's tables as
DataFrames and an output folder and returns the files it wrote, or [] when the store has no data
for it (the figure is then reported as skipped).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from sweeper.errors import SweeperError
from sweeper.registry import Registry

Draw = Callable[[dict[str, pd.DataFrame], Path], list[Path]]


@dataclass(frozen=True)
class Figure:
    module: str  # where the drawing function lives (imported on first use: matplotlib is slow)
    function: str
    tables: tuple[str, ...] = ("trials",)
    description: str = ""

    def draw(self, tables: dict[str, pd.DataFrame], out: Path) -> list[Path]:
        fn: Draw = getattr(importlib.import_module(self.module), self.function)
        return fn(tables, out)


FIGURES: Registry[Figure] = Registry("figure")


def figure(name: str, module: str, function: str, tables=("trials",), description: str = "") -> None:
    FIGURES.add(name, Figure(module, function, tuple(tables), description))


_F = "sweeper.analysis.frankle"
figure("accuracy_vs_bn_params", _F, "accuracy_vs_bn_params", description="Fig. 3: accuracy vs BN parameter count")


def check_figures(names) -> None:
    if not isinstance(names, (list, tuple)):
        raise SweeperError(f"must be a list of figure names, got {names!r}", "figures")
    for name in names:
        try:
            FIGURES.canonical(name)
        except SweeperError as e:
            raise e.at("figures") from None
