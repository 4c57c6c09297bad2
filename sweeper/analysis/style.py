"""Shared plotting conventions: one look for every figure, PNG and PDF side by side."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, drawn on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

plt.rcParams.update(
    {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "axes.titlesize": 10}
)


def save(fig, out: Path, name: str, *, dpi: float | None = None, pdf_dpi: float | None = None,
         tight: bool = True) -> list[Path]:
    """Write `name`.png and `name`.pdf into `out`, then close the figure. dpi: the PNG's
    resolution, pdf_dpi: that of the PDF's raster parts (default: the figure's own); tight: crop
    to what is drawn. The one way every figure is written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig.set_label(name)  # the file's name, for whoever holds the Figure (tests read its axes by it)
    paths = []
    for ext, resolution in (("png", dpi), ("pdf", pdf_dpi)):
        path = out / f"{name}.{ext}"
        options = {"dpi": resolution} if resolution is not None else {}
        fig.savefig(path, **options, **({"bbox_inches": "tight"} if tight else {}))
        paths.append(path)
    plt.close(fig)
    return paths


def done(trials: pd.DataFrame) -> pd.DataFrame:
    """Finished trials only (failed ones have no results)."""
    if trials is None or trials.empty or "status" not in trials:
        return pd.DataFrame()
    return trials[trials["status"] == "done"]


def mean_std(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean and standard deviation over seeds (error bars), with the number of seeds."""
    g = frame.groupby(by, dropna=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out
