"""Experiment registry: the kinds of trial a study can run, one package each behind one
interface (`sweeper.experiment.Experiment`).

`train` is Frankle et al.'s training sweep, `construction` Burkholz's γ/β construction and
`decomposed` BN decomposed at initialisation. Each kind's package `__init__` defines its
EXPERIMENT from its spec alone, so this registry imports no torch. Declaring the row columns up
front keeps every trial's Parquet file on one schema (a failed trial's row carries the same
columns, empty), which `pandas.read_parquet` on a table directory relies on.

Adding a kind: a package beside these three, imported and listed here.
"""
from __future__ import annotations

from sweeper.experiment import Experiment
from sweeper.experiments import construction, decomposed, train
from sweeper.registry import Registry

EXPERIMENTS: Registry[Experiment] = Registry("experiment")
for _kind in (train, decomposed, construction):
    EXPERIMENTS.add(_kind.EXPERIMENT.name, _kind.EXPERIMENT)
