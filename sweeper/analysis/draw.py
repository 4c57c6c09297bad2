"""Redraw figures from a store: every registered figure a study has data for."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweeper.analysis import figures
from sweeper.analysis.cohort import Plan, restricted, study_cohort
from sweeper.analysis.join import among
from sweeper.analysis.spool import COLUMNS, Spools
from sweeper.analysis.style import deferred_writes
from sweeper.store import Store


class LazyTables(Mapping):
    """A study's tables, each read from Parquet on first use (the `bn` table of a big sweep is
    millions of rows; a figure that does not need it never pays for it)."""

    batch_rows = 1 << 18  # rows per Arrow batch when a figure streams a table (reduce)

    def __init__(self, store: Store, study: str):
        self.store, self.study = store, study
        self.names = store.tables(study)
        self._cache: dict[str, pd.DataFrame] = {}
        self._spools = Spools(self)

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.names:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self.store.read(self.study, name)
        return self._cache[name]

    def __contains__(self, name) -> bool:
        return name in self.names  # Mapping's default would read the table to answer

    def columns(self, name: str, cols: list[str], trials=None) -> pd.DataFrame:
        """Only `cols` of a table (those it has), `trial_id` as a categorical: what a figure over
        millions of `bn` rows reads, instead of every column as text. `trials` (ids): only their
        rows, picked by file in the store (sweeper.store's `trials`)."""
        if name not in self.names:
            raise KeyError(name)
        if name in self._cache:
            table = self._cache[name]
            return table[[c for c in cols if c in table]]
        key = f"{name}:{','.join(cols)}:{hash(frozenset(trials)) if trials is not None else ''}"
        if key not in self._cache:
            self._cache[key] = self.store.read(self.study, name, columns=list(cols), categorical=["trial_id"],
                                               trials=trials)
        return self._cache[key]

    def reduce(self, name: str, cols: list[str], fn, categorical=("trial_id",), trials=None):
        """`fn(batches)` over only `cols` of a table, streamed from the store batch by batch
        (Store.reduce; sweeper.analysis.reduce): a figure's summary of 80 million `bn` rows
        without holding them. A table already read whole is batched from memory instead."""
        if name not in self.names:
            raise KeyError(name)
        if name in self._cache:
            import pyarrow as pa

            table = self._cache[name]
            table = table[[c for c in cols if c in table]]
            if trials is not None:
                table = table[among(table["trial_id"], trials)]
            return fn(iter(pa.Table.from_pandas(table, preserve_index=False).to_batches(self.batch_rows)))
        # on an object store, the first pass over `bn` keeps the columns the later passes read on
        # local disk (sweeper.analysis.spool): they read that instead of fetching them again
        key = (name, None if trials is None else frozenset(trials))
        spool = self._spools.find(key, cols) if "trial_id" in categorical else None
        if spool is not None:
            return fn(spool.batches(list(cols)))
        if self.store.local or name != "bn" or "trial_id" not in categorical:
            return self.store.reduce(self.study, name, list(cols), fn, categorical=list(categorical), trials=trials,
                                     batch_rows=self.batch_rows)
        # the read takes every column the later passes want (a first pass that a digest answered
        # left this one first), and the fold sees its own
        wide = list(dict.fromkeys([*cols, *COLUMNS])) if key not in self._spools.done else list(cols)
        return self.store.reduce(self.study, name, wide,
                                 lambda batches: fn(_only(self._spools.tee(key, wide, batches), list(cols))),
                                 categorical=list(categorical), trials=trials, batch_rows=self.batch_rows)

    def digested(self, name: str, digest_name: str, digest, fn, trials=None):
        """(`fn(batches)` over the rows of the trials no stored digest covers, output -> the stored
        digests' rows of the others): Store.reduce_digested. None for a table already read whole
        (the caller folds it from memory)."""
        if name not in self.names:
            raise KeyError(name)
        if name in self._cache:
            return None
        if self.store.local or name != "bn" or "trial_id" not in digest.categorical:
            return self.store.reduce_digested(self.study, name, digest_name, digest, fn, trials=trials,
                                              batch_rows=self.batch_rows)
        # on an object store, what this pass streams is spooled for the later passes (as in `reduce`),
        # kept only if it is every trial's rows: none came from a digest
        key = (name, None if trials is None else frozenset(trials))
        found = self.store.reduce_digested(self.study, name, digest_name, digest,
                                           lambda batches: fn(self._spools.tee(key, list(digest.columns), batches)),
                                           trials=trials, batch_rows=self.batch_rows)
        if found[1]:
            self._spools.discard(key)
        return found

    def close(self) -> None:
        """Delete what the reads spooled to local disk (also done when the object is collected)."""
        self._spools.close()

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _only(batches, cols: list[str]):
    """The batches with only those of `cols` they have, in that order."""
    for batch in batches:
        yield batch.select([c for c in cols if c in batch.schema.names])


@dataclass
class Drawn:
    written: dict[str, list[Path]] = field(default_factory=dict)  # "study/figure" -> files
    skipped: dict[str, str] = field(default_factory=dict)  # "study/figure" -> why
    folders: dict[str, Path] = field(default_factory=dict)  # study -> the local folder drawn into
    copied: dict[str, str] = field(default_factory=dict)  # study -> the object store folder it went to
    left_out: dict[str, list[str]] = field(default_factory=dict)  # study -> trials outside its plan, one line a kind


def local_folder(store: Store, study: str) -> Path:
    """Where a study's figures are drawn when no folder is named. A local store keeps them in
    `<store>/<study>/figures`. matplotlib writes local files, so for an object store it is a local
    folder named after the store, `./figures/<bucket>/<prefix>/<study>` (never a folder named after
    the bare bucket), and `draw_study` copies the files into the store's `<study>/figures` after."""
    if store.local:
        return Path(store.path(study, "figures"))
    parts = [p for p in store.root.split("/") if p not in ("", ".", "..")]
    return Path("figures", *parts, study).resolve()


def draw_study(store: Store, study: str, out: Path | None = None, names: list[str] | None = None,
               plan: Plan | None = None) -> Drawn:
    """Draw `names` (default: every registered figure) for one study into `out` (default
    `local_folder`; for an object store the files are then copied into `<store>/<study>/figures`),
    from the trials of its current plan only (`plan`, else the one its last run recorded; see
    sweeper.analysis.cohort): what the plan leaves out is listed in `Drawn.left_out`."""
    publish = out is None and not store.local
    out = Path(out) if out else local_folder(store, study)
    registry = figures()
    lazy = LazyTables(store, study)
    cohort = study_cohort(store, study, lazy, plan)
    tables = restricted(lazy, cohort)
    drawn = Drawn(folders={study: out}, left_out={study: cohort.left_out} if cohort.left_out else {})
    try:
        with deferred_writes():  # CSVs written while the next figures draw; all written after
            for name in names or registry.names():
                files = registry[name](tables, out)
                if files:
                    drawn.written[f"{study}/{name}"] = files
                else:
                    drawn.skipped[f"{study}/{name}"] = "no data for it in this study"
    finally:
        lazy.close()
    if publish and drawn.written:
        for files in drawn.written.values():
            for f in files:
                store.write_bytes(store.path(study, "figures", *Path(f).relative_to(out).parts), Path(f).read_bytes())
        drawn.copied[study] = store.url(study, "figures")
    return drawn


def draw_store(store: Store, out: Path | None = None, studies: list[str] | None = None,
               plans: dict[str, Plan] | None = None) -> Drawn:
    """Every study's figures (`plans`: study -> the plan of its study file, where one was given)."""
    plans = plans or {}
    total = Drawn()
    for study in studies or store.studies():
        d = draw_study(store, study, Path(out) / study if out else None, plan=plans.get(study))
        total.written.update(d.written)
        total.skipped.update(d.skipped)
        total.folders.update(d.folders)
        total.copied.update(d.copied)
        total.left_out.update(d.left_out)
    return total
