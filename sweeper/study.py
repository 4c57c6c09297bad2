"""Studies: what a study file declares, and its expansion into trial specs.

A study file is Python that defines `study = Study(...)`:

    study = Study(
        name="quickstart",
        dataset="digits",
        axes={"model": ["resnet-8", "resnet-14"], "trainable": ["all", "bn"], "seed": [0, 1]},
        recipe={"epochs": 10, "lr": 0.1, "batch_size": 64},
        measure=["bn"],
        figures=["accuracy_vs_bn_params"],
        quick={"axes": {"seed": [0]}, "recipe": {"epochs": 2}},
    )

Axes form a grid (their cartesian product, in the order given); the seed is an axis like any
other. An axis whose values are dicts is a joint axis: each dict sets several fields together.
`axes` may also be a list of such dicts: several grids, whose trials are their union.
`quick` overrides axes and recipe for a CPU-sized smoke run (`--quick`), stored as `<name>-quick`.
`cpu` overrides them the same way for a laptop-scale run big enough to show the papers' effects
(`--scale cpu`, hours on a laptop's cores), stored as `<name>-cpu`. `--scale full` (the default)
is the study as declared.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sweeper.checks import CPUS, GPUS, SEED, at_least, check_study_name, check_text
from sweeper.errors import SweeperError

#: The sizes a study runs at (`--scale`): `quick`, a minutes-long smoke run; `cpu`, a laptop's
#: hours, big enough to show the papers' effects; `full`, the papers' own scale (a cluster's).
SCALES = ("quick", "cpu", "full")


@dataclasses.dataclass
class Search:
    """Optuna search over continuous recipe values (Ray Tune's OptunaSearch), beside the grid.

    space: field -> ("loguniform" | "uniform", low, high); metric: a trials column, maximised
    (mode "max") or minimised ("min"). The study's axes must expand to one trial: the search varies
    the space's fields around it. Every sampled trial lands in the store like a grid trial (same ids,
    so a repeated search reuses finished trials), and table `search` records the chosen one. The
    search's Optuna study is kept in `<store>/<study>/optuna.journal` (optuna-dashboard opens it):
    `num_samples` is the search's total, and running it again continues it (see
    sweeper.orchestration.search).
    """

    space: dict[str, tuple[str, float, float]]
    num_samples: int = 8
    metric: str = "test_acc"
    mode: str = "max"
    asha: bool = False  # stop weak trials early (ASHA) on the per-epoch metric
    seed: int = 0  # the sampler's seed

    def validate(self, spec_type) -> None:
        fields = spec_type.field_types()
        if not self.space:
            raise SweeperError("needs at least one field to search", "search.space")
        for name, dist in self.space.items():
            where = f"search.space.{name}"
            if name not in fields or fields[name] not in (float, int):
                numeric = sorted(k for k, t in fields.items() if t in (float, int))
                raise SweeperError(f"not a numeric field; valid fields: {', '.join(numeric)}", where)
            if not (isinstance(dist, (tuple, list)) and len(dist) == 3 and dist[0] in ("loguniform", "uniform")):
                raise SweeperError("expected (\"loguniform\" | \"uniform\", low, high)", where)
            kind, low, high = dist
            finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                         for v in (low, high))
            if not (finite and low < high):
                raise SweeperError(f"expected finite numbers low < high, got {low!r}, {high!r}", where)
            if kind == "loguniform" and low <= 0:
                raise SweeperError(f"loguniform needs low > 0, got {low!r}", where)
            valid = getattr(spec_type, "RANGES", {}).get(name)
            # every sampled value must be a valid spec (high itself is never drawn)
            if valid is not None and (valid.problem(low) or (valid.problem(high) and high != valid.high)):
                raise SweeperError(f"samples outside the field's range: {name} must be {valid.describe()}, "
                                   f"got ({low!r}, {high!r})", where)
        at_least(1, integer=True).check(self.num_samples, "search.num_samples")
        SEED.check(self.seed, "search.seed")
        if self.mode not in ("max", "min"):
            raise SweeperError(f"expected max or min, got {self.mode!r}", "search.mode")

    def identity(self, base_id: str) -> str:
        """The search's id: the same search over the same base trial is the same search."""
        import hashlib
        import json

        text = json.dumps([base_id, {k: list(v) for k, v in sorted(self.space.items())}, self.num_samples,
                           self.metric, self.mode, self.asha, self.seed])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Study:
    name: str
    experiment: str = "train"
    dataset: str | None = None
    axes: dict[str, list[Any]] | list[dict[str, list[Any]]] = dataclasses.field(default_factory=dict)
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    measure: list[str] | None = None
    figures: list[str] = dataclasses.field(default_factory=list)
    quick: dict[str, Any] | None = None
    cpu: dict[str, Any] | None = None
    resources: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    search: Search | None = None
    description: str = ""

    # -- variants ------------------------------------------------------------------------------
    def quick_variant(self) -> "Study":
        return self.variant("quick")

    def variant(self, scale: str) -> "Study":
        """The study at `scale` (SCALES): `full` as declared; `quick` and `cpu` with that field's
        overrides, under the name `<name>-<scale>` (their own folder of the store)."""
        if scale not in SCALES:
            raise SweeperError(f"unknown scale {scale!r}; valid choices: {', '.join(SCALES)}", "scale")
        if scale == "full":
            return self
        overrides = getattr(self, scale)
        if overrides is None:
            raise SweeperError(f"this study declares no {scale} variant", scale)
        unknown = set(overrides) - {"axes", "recipe", "resources", "name", "figures", "dataset", "measure"}
        if unknown:
            raise SweeperError(
                f"unknown keys {sorted(unknown)}; valid keys: axes, dataset, figures, measure, name, recipe, resources",
                scale,
            )
        return dataclasses.replace(
            self,
            name=overrides.get("name", f"{self.name}-{scale}"),
            dataset=overrides.get("dataset", self.dataset),
            axes=overrides["axes"] if isinstance(overrides.get("axes"), list) or isinstance(self.axes, list)
            else {**self.axes, **overrides.get("axes", {})},
            recipe={**self.recipe, **overrides.get("recipe", {})},
            measure=overrides.get("measure", self.measure),
            figures=overrides.get("figures", self.figures),
            resources={**self.resources, **overrides.get("resources", {})},
            quick=None,
            cpu=None,
        )

    # -- expansion -----------------------------------------------------------------------------
    @property
    def spec_type(self):
        from sweeper.experiments import EXPERIMENTS

        try:
            return EXPERIMENTS[self.experiment].spec_type
        except SweeperError as e:
            raise e.at("experiment") from None

    def base_values(self) -> dict[str, Any]:
        values = dict(self.recipe)
        if self.dataset is not None:
            values["dataset"] = self.dataset
        if self.measure is not None:
            values["measure"] = list(self.measure)
        return values

    def validate(self) -> None:
        check_study_name(self.name, "name")
        grids = self.grids()
        if not grids or not all(isinstance(g, dict) for g in grids):
            raise SweeperError("must be a dict of field -> list of values (or a list of such dicts)", "axes")
        for i, grid in enumerate(grids):
            self._validate_grid(grid, "axes" if isinstance(self.axes, dict) else f"axes[{i}]")
        from sweeper.analysis import check_figures

        check_figures(self.figures)
        if not isinstance(self.resources, dict):
            raise SweeperError(f"must be a dict with keys cpu and gpu, got {self.resources!r}", "resources")
        CPUS.check(self.resources.get("cpu", 1), "resources.cpu")  # what --cpus-per-trial may be
        GPUS.check(self.resources.get("gpu", 0), "resources.gpu")
        unknown = set(self.resources) - {"cpu", "gpu"}
        if unknown:
            raise SweeperError(f"unknown keys {sorted(unknown)}; valid keys: cpu, gpu", "resources")

    def grids(self) -> list[dict[str, list[Any]]]:
        return list(self.axes) if isinstance(self.axes, list) else [self.axes]

    def _validate_grid(self, grid: dict, prefix: str) -> None:
        for axis, values in grid.items():
            where = f"{prefix}.{axis}"
            if not isinstance(values, (list, tuple)):
                raise SweeperError(f"must be a list of values, got {values!r}", where)
            if not values:
                raise SweeperError("is empty: a grid axis needs at least one value", where)
            keys = [repr(sorted(v.items())) if isinstance(v, dict) else repr(v) for v in values]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise SweeperError(f"lists {dupes[0]} more than once", where)
            if axis in self.recipe:
                raise SweeperError("is both an axis and a recipe value", where)

    def grid(self) -> list[dict[str, Any]]:
        """The grids' points as field values (before spec construction)."""
        points = []
        for grid in self.grids():
            names = list(grid)
            for combo in itertools.product(*(grid[n] for n in names)):
                values = self.base_values()
                for name, value in zip(names, combo):
                    if isinstance(value, dict):
                        values.update(value)  # a joint axis sets several fields at once
                    else:
                        values[name] = value
                points.append(values)
        return points

    def specs(self) -> list:
        """Validated, fully resolved, de-duplicated specs (two grid points that resolve to the
        same spec, such as resnet-14 and wrn-14-1, are one trial). Kept while the study's fields
        stay as they are: `load_study` validates every trial and the command then uses them, and a
        100,000-trial grid is worth expanding once."""
        key = repr((self.name, self.experiment, self.dataset, self.axes, self.recipe, self.measure, self.figures,
                    self.resources, self.search))
        cached = self.__dict__.get("_specs")
        if cached is not None and cached[0] == key:
            return list(cached[1])
        out = self._expand()
        self.__dict__["_specs"] = (key, out)
        return list(out)

    def _expand(self) -> list:
        self.validate()
        spec_type = self.spec_type
        out, seen = [], set()
        for values in self.grid():
            try:
                spec = spec_type.from_values(values)
            except SweeperError as e:
                field = e.where.split(":")[0] if e.where else None
                in_axes = any(field in g for g in self.grids())
                prefix = f"axes.{field}" if in_axes else (f"recipe.{field}" if field else None)
                raise SweeperError(e.message, prefix or e.where) from None
            if spec.trial_id not in seen:
                seen.add(spec.trial_id)
                out.append(spec)
        if self.search is not None:
            self.search.validate(spec_type)
            if len(out) != 1:
                raise SweeperError(f"a study with a search needs axes that give one trial, got {len(out)}", "search")
            if self.search.asha and getattr(out[0], "eval_every", 1) != 1:
                raise SweeperError(f"ASHA compares trials' {self.search.metric} after every epoch, and recipe.eval_every "
                                   f"{out[0].eval_every} leaves epochs untested; use eval_every 1 or asha False",
                                   "search.asha")
        return out


#: How long a study file may take to import. Importing one builds a Study (and imports torch once,
#: a few seconds); a file still running after this is stuck (an endless loop, a wait on input).
IMPORT_SECONDS = 120.0


class _ImportTimeout(BaseException):
    """Raised into a study file's import by the timer (a BaseException: the file's own
    `except Exception` cannot swallow it)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Interrupt the block after `seconds` (SIGALRM; only in the main thread, where signals land:
    elsewhere, such as a notebook's worker thread, there is no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise _ImportTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _stdout_to_stderr():
    """What a study file prints goes to stderr, at the Python and the file-descriptor level: stdout
    is the commands' machine-readable output (`plan --json`)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors to swap (an embedded interpreter): Python's level only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_study(path: str | Path, quick: bool = False, overrides: list[str] | None = None,
               name: str | None = None, scale: str | None = None) -> Study:
    """Import a study file and return its Study at `scale` (SCALES; `quick=True` is scale
    "quick"), reporting every failure as one SweeperError: a file that does not parse, raises,
    exits (sys.exit), runs longer than IMPORT_SECONDS, or does not assign a Study to the name
    `study`. What it prints goes to stderr. `overrides` (`--set` texts) and `name` (`--name`)
    change it as `sweeper.overrides.apply` says, validated as the file is."""
    scale = "quick" if quick else (scale or "full")
    if scale not in SCALES:
        raise SweeperError(f"unknown scale {scale!r}; valid choices: {', '.join(SCALES)}", "--scale")
    check_text(path, "study file", "has")
    path = Path(path)
    if not path.is_file():
        raise SweeperError("no such study file", str(path))
    try:
        source = path.read_text()
        compile(source, str(path), "exec")
    except SyntaxError as e:
        raise SweeperError(f"does not parse: line {e.lineno}: {e.msg}", str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # unreadable, not text, NUL bytes
        raise SweeperError(f"cannot be read as Python source: {_one_line(e)}", str(path)) from None
    module_name = f"sweeper_study_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling need the module registered
    try:
        with _stdout_to_stderr(), _time_limit(IMPORT_SECONDS):
            spec.loader.exec_module(module)
    except SweeperError as e:
        sys.modules.pop(module_name, None)
        raise e.at(str(path)) from None
    except _ImportTimeout:
        sys.modules.pop(module_name, None)
        raise SweeperError(f"still importing after {IMPORT_SECONDS:g} s (an endless loop? a wait for input?); "
                           "a study file should only build its Study", str(path)) from None
    except SystemExit as e:
        sys.modules.pop(module_name, None)
        raise SweeperError(f"exits on import (sys.exit({e.code!r})) instead of defining a study",
                           str(path)) from None
    except KeyboardInterrupt:
        sys.modules.pop(module_name, None)
        raise
    except BaseException as e:  # noqa: BLE001 - whatever the file raises is the file's error
        sys.modules.pop(module_name, None)
        raise SweeperError(f"raises on import: {type(e).__name__}: {_one_line(e)}", str(path)) from None
    # Exactly the name `study`: another Study object in the file (a base to derive from, an old
    # variant) is never picked in its place.
    if "study" not in vars(module):
        raise SweeperError("defines no study: assign `study = Study(...)`", str(path))
    study = module.study
    if not isinstance(study, Study):
        raise SweeperError(f"`study` holds {type(study).__name__} {_one_line(repr(study))[:60]}, not a Study: "
                           "assign `study = Study(...)`", str(path))
    from sweeper import overrides as command_line

    try:
        study = command_line.apply(study, overrides, scale, name)
        try:
            study.specs()  # validate every trial before anything runs
        except SweeperError as e:
            raise command_line.blame(e, overrides) from None
    except SweeperError as e:
        raise e.at(str(path)) from None
    return study
