"""Redraw figures from a store: every registered figure a study has data for."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sweeper.analysis import FIGURES
from sweeper.store import Store


@dataclass
class Drawn:
    written: dict[str, list[Path]] = field(default_factory=dict)  # "study/figure" -> files
    skipped: dict[str, str] = field(default_factory=dict)  # "study/figure" -> why


def draw_study(store: Store, study: str, out: Path | None = None, names: list[str] | None = None) -> Drawn:
    """Draw `names` (default: every registered figure) for one study into `out` (default
    `<store>/<study>/figures`, which needs a local store)."""
    out = Path(out) if out else Path(store.path(study, "figures"))
    drawn = Drawn()
    available = set(store.tables(study))
    cache: dict = {}
    for name in names or FIGURES.names():
        fig = FIGURES[name]
        missing = [t for t in fig.tables if t not in available]
        key = f"{study}/{name}"
        if missing:
            drawn.skipped[key] = f"no {', '.join(missing)} table"
            continue
        tables = {t: cache[t] if t in cache else cache.setdefault(t, store.read(study, t)) for t in fig.tables}
        files = fig.draw(tables, out)
        if files:
            drawn.written[key] = files
        else:
            drawn.skipped[key] = "not enough data in its tables"
    return drawn


def draw_store(store: Store, out: Path | None = None, studies: list[str] | None = None) -> Drawn:
    total = Drawn()
    for study in studies or store.studies():
        d = draw_study(store, study, Path(out) / study if out else None)
        total.written.update(d.written)
        total.skipped.update(d.skipped)
    return total
