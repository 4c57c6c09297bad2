"""The one interface every experiment kind implements, and the one result type its run returns.

An experiment kind is a package under `sweeper/experiments/` whose `__init__` defines
``EXPERIMENT = Experiment(...)``: its spec type, its run function, the columns it adds to the
`trials` row, the metric that ranks its trials, the analysis modules that draw its figures, and
(optionally) its cost model. The runner, the store, the nightly report, `sweeper plan` and the CLI
read these instead of naming kinds.

The registry must stay light (study files, `sweeper plan` and analysis read it without torch), so a
kind's definition imports only its spec, and its run and cost functions are named as
"module:function" and imported on first use.

A run function has one signature for every kind:

    run(spec, data_root=None, *, threads=None, callbacks=(), resume=None) -> TrialResult

Callbacks have one signature too, ``callback(progress: Progress) -> None``, and are called after
every epoch of training (`progress.end` False) and once at the end (`progress.end` True). A kind
without epochs calls them once, at the end. A kind that can resume passes `progress.state`, a
callable returning its resumable state, which a later run takes back as `resume`.

A cost function, ``cost(spec) -> TrialCost``, says what one trial computes before it runs; `sweeper
plan` turns that into hours on this machine's CPUs or a card's rate (sweeper.plan).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class TrialResult:
    row: dict[str, Any]  # scalar columns for the trial's `trials` row
    tables: dict[str, Any] = field(default_factory=dict)  # table name -> pandas DataFrame


@dataclass
class Progress:
    """What a callback sees: after each epoch of training, and once at the end."""

    epoch: int  # epochs finished
    epochs: int  # epochs the trial trains in all (0 for a kind without epochs)
    metrics: dict[str, Any]  # the epoch's scalars (its `curves` row); at the end the final evaluation,
    #                          or the result row of a kind without epochs
    state: Callable[[], dict[str, Any]] | None = None  # resumable state (a checkpoint); None: cannot resume
    end: bool = False
    tables: dict[str, Any] = field(default_factory=dict)  # at the end: the trial's tables; callbacks may add
    context: Any = None  # at the end: the kind's view of what it built, for measurements


Callback = Callable[[Progress], None]


@dataclass(frozen=True)
class TrialCost:
    """What one trial computes, for the estimate `sweeper plan` prints before a sweep starts."""

    flops: int  # floating-point operations of the whole trial (training and evaluation)
    precision: str = "fp32"  # the arithmetic they run in, which picks a GPU's rate: "fp32" or "bf16"


@dataclass(frozen=True)
class Experiment:
    name: str
    spec_type: type  # a sweeper.spec.Spec subclass whose `experiment` is `name`
    run_function: str  # "module:function", imported on first use (torch lives there)
    columns: dict[str, type]  # result columns of the trials row -> str/int/float/bool
    metric: str  # the trials column that ranks its trials (progress lines, nightly comparisons)
    mode: str  # "max" or "min": which way `metric` is better
    figure_modules: tuple[str, ...] = ()  # sweeper.analysis modules whose FIGURES draw its results
    description: str = ""
    cost: str | None = None  # "module:function", spec -> TrialCost, imported on first use; None: no cost model
    # "module:function", (specs, threads) -> seconds per trial timed on this CPU (plan --time-steps)
    timing: str | None = None

    def __post_init__(self) -> None:
        if self.spec_type.experiment != self.name:
            raise ValueError(f"experiment {self.name!r}: its spec type says {self.spec_type.experiment!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"experiment {self.name!r}: mode must be max or min, got {self.mode!r}")

    def run(self, spec, data_root: str | None = None, **kwargs) -> TrialResult:
        """Run one trial (no Ray, no store): kwargs are threads, callbacks and resume."""
        return _function(self.run_function)(spec, data_root, **kwargs)

    def trial_cost(self, spec) -> TrialCost | None:
        """What one trial of `spec` computes, or None for a kind without a cost model."""
        return None if self.cost is None else _function(self.cost)(spec)

    def trial_seconds(self, specs, threads: int = 1) -> list[float] | None:
        """Seconds each trial of `specs` takes on this CPU, timed from real steps; None for a kind
        without a timing hook."""
        return None if self.timing is None else _function(self.timing)(specs, threads)


def _function(name: str) -> Callable:
    """The function a "module:function" name names, importing its module (torch lives there)."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)
