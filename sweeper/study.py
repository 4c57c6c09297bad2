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
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
import sys
from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass
class Search:
    """Optuna search over continuous recipe values (Ray Tune's OptunaSearch), beside the grid.

    space: field -> ("loguniform" | "uniform", low, high); metric: a trials column, maximised
    (mode "max") or minimised ("min"). The study's axes must expand to one trial: the search varies
    the space's fields around it. Every sampled trial lands in the store like a grid trial (same ids,
    so a repeated search reuses finished trials), and table `search` records the chosen one.
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
            if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high):
                raise SweeperError(f"expected low < high, got {low!r}, {high!r}", where)
            if kind == "loguniform" and low <= 0:
                raise SweeperError(f"loguniform needs low > 0, got {low!r}", where)
        if self.num_samples < 1:
            raise SweeperError(f"must be at least 1, got {self.num_samples}", "search.num_samples")
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
    resources: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    search: Search | None = None
    description: str = ""

    # -- variants ------------------------------------------------------------------------------
    def quick_variant(self) -> "Study":
        if self.quick is None:
            raise SweeperError("this study declares no quick variant", "quick")
        unknown = set(self.quick) - {"axes", "recipe", "resources", "name", "figures", "dataset", "measure"}
        if unknown:
            raise SweeperError(
                f"unknown keys {sorted(unknown)}; valid keys: axes, dataset, figures, measure, name, recipe, resources",
                "quick",
            )
        return dataclasses.replace(
            self,
            name=self.quick.get("name", f"{self.name}-quick"),
            dataset=self.quick.get("dataset", self.dataset),
            axes=self.quick["axes"] if isinstance(self.quick.get("axes"), list) or isinstance(self.axes, list)
            else {**self.axes, **self.quick.get("axes", {})},
            recipe={**self.recipe, **self.quick.get("recipe", {})},
            measure=self.quick.get("measure", self.measure),
            figures=self.quick.get("figures", self.figures),
            resources={**self.resources, **self.quick.get("resources", {})},
            quick=None,
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
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SweeperError(f"must be letters, digits, '.', '_' or '-', got {self.name!r}", "name")
        grids = self.grids()
        if not grids or not all(isinstance(g, dict) for g in grids):
            raise SweeperError("must be a dict of field -> list of values (or a list of such dicts)", "axes")
        for i, grid in enumerate(grids):
            self._validate_grid(grid, "axes" if isinstance(self.axes, dict) else f"axes[{i}]")
        from sweeper.analysis import check_figures

        check_figures(self.figures)
        for key in ("cpu", "gpu"):
            value = self.resources.get(key, 0)
            if not isinstance(value, (int, float)) or value < 0:
                raise SweeperError(f"must be a non-negative number, got {value!r}", f"resources.{key}")
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
        same spec, such as resnet-14 and wrn-14-1, are one trial)."""
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
        return out


def load_study(path: str | Path, quick: bool = False) -> Study:
    """Import a study file and return its Study, reporting every failure as one SweeperError."""
    path = Path(path)
    if not path.is_file():
        raise SweeperError("no such study file", str(path))
    try:
        source = path.read_text()
        compile(source, str(path), "exec")
    except SyntaxError as e:
        raise SweeperError(f"does not parse: line {e.lineno}: {e.msg}", str(path)) from None
    module_name = f"sweeper_study_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling need the module registered
    try:
        spec.loader.exec_module(module)
    except SweeperError as e:
        raise e.at(str(path)) from None
    except Exception as e:
        raise SweeperError(f"raises on import: {type(e).__name__}: {e}", str(path)) from None
    study = getattr(module, "study", None)
    if not isinstance(study, Study):
        found = [v for v in vars(module).values() if isinstance(v, Study)]
        if len(found) != 1:
            raise SweeperError("defines no study: assign `study = Study(...)`", str(path))
        study = found[0]
    try:
        if quick:
            study = study.quick_variant()
        study.specs()  # validate every trial before anything runs
    except SweeperError as e:
        raise e.at(str(path)) from None
    return study
