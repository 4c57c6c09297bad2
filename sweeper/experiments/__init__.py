"""Experiment registry: the kinds of trial a study can run, each a spec type, a run function and
the typed columns of its `trials` row.

`train` is Frankle et al.'s training sweep; `construction` (Burkholz's γ/β construction) and
`decomposed` (BN decomposed at initialisation) are registered by their modules. Declaring the row
columns up front keeps every trial's Parquet file on one schema (a failed trial's row carries the
same columns, empty), which `pandas.read_parquet` on a table directory relies on.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from sweeper.registry import Registry


@dataclass(frozen=True)
class Experiment:
    spec_module: str  # "module:Class"
    run_function: str  # "module:function"
    columns: dict[str, type]  # result columns of the trials row -> str/int/float/bool
    description: str = ""

    @property
    def row_columns(self) -> dict[str, type]:
        """Declared here, or as ROW_COLUMNS beside the run function."""
        if self.columns:
            return self.columns
        module = importlib.import_module(self.run_function.split(":")[0])
        return getattr(module, "ROW_COLUMNS")

    @property
    def spec_type(self):
        module, name = self.spec_module.split(":")
        return getattr(importlib.import_module(module), name)

    def run(self, spec, data_root, **kwargs) -> Any:
        module, name = self.run_function.split(":")
        fn: Callable = getattr(importlib.import_module(module), name)
        out = fn(spec, data_root, **kwargs)
        if isinstance(out, tuple):  # (row, tables) from the science modules
            from sweeper.trial import TrialResult

            out = TrialResult(*out)
        return out


EXPERIMENTS: Registry[Experiment] = Registry("experiment")

EXPERIMENTS.add(
    "train",
    Experiment(
        "sweeper.experiments.train.spec:TrainSpec",
        "sweeper.experiments.train.loop:run_trial",
        {
            "model": str,
            "test_acc": float,
            "test_top5": float,
            "test_loss": float,
            "train_acc": float,
            "train_loss": float,
            "total_params": int,
            "bn_params": int,
            "output_params": int,
            "shortcut_params": int,
            "trainable_params": int,
            "train_seconds": float,
            "resumed_from_epoch": int,
            "device": str,
        },
        "train a network's chosen subset with SGD and measure it (Frankle et al.)",
    ),
)


def _register_science() -> None:
    """Experiments whose row columns live beside their science (imported lazily: they pull torch)."""
    EXPERIMENTS.add(
        "decomposed",
        Experiment(
            "sweeper.experiments.decomposed.run:DecomposedSpec",
            "sweeper.experiments.decomposed.run:run",
            {},  # filled from sweeper.decomposed.ROW_COLUMNS on first use
            "a deep random network with BN split into recentering, rescaling and the non-linearity, "
            "at initialisation (Nachum et al. 2024; Daneshmand et al. 2021)",
        ),
    )
    EXPERIMENTS.add(
        "construction",
        Experiment(
            "sweeper.experiments.construction.run:ConstructionSpec",
            "sweeper.experiments.construction.run:run",
            {},  # sweeper.construction.ROW_COLUMNS
            "solve for the γ/β that make a random source network reproduce a target (Burkholz 2024), "
            "beside BN-only SGD on the same random weights",
        ),
    )


_register_science()
