"""Command-line overrides of a study file: `--set recipe.lr=0.05`, `--set axes.seed=0,1,2`,
`--set quick.recipe.epochs=1` (or `cpu.`), and `--name NAME` for the variant's own folder in the store.

One value changed should not mean a copied study file. An override edits the Study before its
trials are expanded, so the result is validated exactly as the file is (the spec's types, ranges and
registries) and its trials are ordinary trials: their ids follow from their specs, a re-run skips
them as done. Every command that loads a study (run, plan, submit, nightly, schedule, slurm) takes
the same flags through `add_options`, and those that start another command pass them on with
`arguments`.

Grammar (Hydra's habits, without its config groups):
    recipe.KEY=VALUE            one value, read as the spec field's type
    axes.KEY=V1,V2,...          the axis' values (commas inside brackets or parentheses, as in
                                `normal(mean=0, std=0.05)`, do not split); `[...]` is a literal
                                list, needed for list-valued fields ([[0.5,0.75],[0.25]]) and
                                joint axes ([{"depth": 8, "width": 8}])
    quick.recipe.KEY=VALUE, quick.axes.KEY=...   what --quick (--scale quick) changes
    cpu.recipe.KEY=VALUE, cpu.axes.KEY=...       what --scale cpu changes
Setting recipe.KEY on an axis fixes that axis to the one value; setting axes.KEY on a recipe
value sweeps it. With --quick or --scale cpu, recipe.* and axes.* apply to that variant, after
what the file's `quick`/`cpu` sets: the command line has the last word.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from typing import Any

from sweeper.checks import check_study_name
from sweeper.errors import SweeperError

SECTIONS = ("recipe", "axes")
#: The study variants an override may edit before the variant is taken (sweeper.study.SCALES but `full`).
VARIANTS = ("quick", "cpu")
_FORMS = "recipe.KEY=VALUE, axes.KEY=V1,V2,..., quick.recipe.KEY=VALUE, cpu.axes.KEY=V1,V2,..."
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null")


@dataclasses.dataclass(frozen=True)
class Override:
    variant: str | None  # edits the study's `quick` or `cpu` variant (None: the study as taken)
    section: str  # "recipe" or "axes"
    key: str
    text: str  # the value as typed

    @property
    def target(self) -> str:
        return f"{self.variant + '.' if self.variant else ''}{self.section}.{self.key}"

    @property
    def where(self) -> str:
        return f"--set {self.target}"

    def __str__(self) -> str:
        return f"{self.target}={self.text}"


# -- the command line ---------------------------------------------------------------------------
def add_options(p) -> None:
    """`--set` and `--name`, shared by run, plan, submit, nightly, schedule and slurm."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change the study without editing it (repeatable): recipe.KEY=VALUE, "
                        "axes.KEY=V1,V2,..., quick.recipe.KEY=VALUE, cpu.axes.KEY=V1,V2,...")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="store the (overridden) study under this name, its own folder in the store "
                        "(NAME-quick with --quick, NAME-cpu with --scale cpu)")


def arguments(args) -> list[str]:
    """The flags that pass `args`' overrides on to another `sweeper` command (a job, a crontab line,
    a batch script); each element is one argument, for the caller to quote."""
    out: list[str] = []
    for text in getattr(args, "overrides", None) or []:
        out += ["--set", text]
    if getattr(args, "name", None):
        out += ["--name", args.name]
    return out


def parse(items: list[str] | None) -> list[Override]:
    """The overrides' syntax (their types need the study: see `apply`)."""
    out: list[Override] = []
    seen: set[str] = set()
    for item in items or []:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        variant = parts[0] if parts[0] in VARIANTS else None
        if variant:
            parts = parts[1:]
        if not sep or len(parts) != 2 or parts[0] not in SECTIONS or not parts[1].isidentifier():
            raise SweeperError(f"cannot read {item!r}; expected {_FORMS}", "--set")
        override = Override(variant, parts[0], parts[1], text.strip())
        if override.target in seen:
            raise SweeperError("is given twice; set each key once", override.where)
        if override.section == "axes" and not override.text:
            raise SweeperError("is empty: a grid axis needs at least one value", override.where)
        seen.add(override.target)
        out.append(override)
    return out


def describe(items: list[str] | None, name: str | None = None) -> str | None:
    """The line `plan` prints: what the command line changed."""
    parts = [str(o) for o in parse(items)] + ([f"name={name}"] if name else [])
    return f"overrides: {'; '.join(parts)}" if parts else None


# -- applying -----------------------------------------------------------------------------------
def apply(study, items: list[str] | None = None, scale: str = "full", name: str | None = None):
    """The study as the command line asks: renamed, its variants changed, the one for `scale`
    taken, then its recipe and axes changed. Raises SweeperError naming the `--set` at fault."""
    overrides = parse(items)
    if name is not None:
        check_study_name(name, "--name")
        from sweeper.report.layout import REPORTS

        if name == REPORTS:
            raise SweeperError(f"the study name {REPORTS!r} is reserved for the nightly reports", "--name")
        renamed = {v: dict(getattr(study, v), name=f"{name}-{v}") for v in VARIANTS if getattr(study, v) is not None}
        study = dataclasses.replace(study, name=name, **renamed)
    spec_type = study.spec_type if overrides else None
    later = [o for o in overrides if not o.variant]
    for v in VARIANTS:
        early = [o for o in overrides if o.variant == v]
        if not early:
            continue
        variant = dict(getattr(study, v) or {})
        for o in early:
            part = variant.get(o.section)
            if o.section == "axes" and isinstance(part, list):  # several grids: each gets it
                variant["axes"] = [{**g, o.key: _axis(o, spec_type, g.get(o.key))} for g in part]
            else:
                part = dict(part or {})
                part[o.key] = _axis(o, spec_type, part.get(o.key)) if o.section == "axes" \
                    else _value(o, spec_type)
                variant[o.section] = part
        study = dataclasses.replace(study, **{v: variant})
    study = study.variant(scale)
    for o in later:
        study = _set_axis(study, o, spec_type) if o.section == "axes" else _set_recipe(study, o, spec_type)
    return study


def blame(error: SweeperError, items: list[str] | None) -> SweeperError:
    """A study validation error about a field the command line set, named by its `--set`: the user
    typed the flag, not the file's line."""
    field = (error.where or "").split(":")[0]
    section, _, key = field.partition(".")
    for o in reversed(parse(items)):
        if o.key == key and section in SECTIONS:
            return SweeperError(error.message, o.where)
    return error


def _set_recipe(study, o: Override, spec_type):
    value = _value(o, spec_type)
    if o.key in ("dataset", "measure") and getattr(study, o.key) is not None:
        return dataclasses.replace(study, **{o.key: value})  # the study's own field wins over its recipe
    covered = _covers(o, spec_type)
    grids = study.grids()
    if any(isinstance(v, dict) and covered & set(v) for g in grids for values in g.values() for v in values):
        raise SweeperError("is set by a joint axis of this study; set that axis with --set axes.NAME=[...]",
                           o.where)
    # an axis set as one recipe value: the axis is fixed to it
    kept = [{k: v for k, v in g.items() if k not in covered} for g in grids]
    axes = kept if isinstance(study.axes, list) else kept[0]
    recipe = {k: v for k, v in study.recipe.items() if k not in covered}
    return dataclasses.replace(study, axes=axes, recipe={**recipe, o.key: value})


def _set_axis(study, o: Override, spec_type):
    covered = _covers(o, spec_type) - {o.key}
    grids = [{**{k: v for k, v in g.items() if k not in covered}, o.key: _axis(o, spec_type, g.get(o.key))}
             for g in study.grids()]
    recipe = {k: v for k, v in study.recipe.items() if k != o.key and k not in covered}  # now swept
    return dataclasses.replace(study, axes=grids if isinstance(study.axes, list) else grids[0], recipe=recipe)


def _covers(o: Override, spec_type) -> set[str]:
    """The fields a key sets: itself, or for a shorthand (`model`) the fields it stands for, which
    the command line then sets in place of the file's (else the file's `depth` axis would win over
    `--set recipe.model=resnet-20`)."""
    if o.key in spec_type.field_types():
        return {o.key}
    try:
        return {o.key, *spec_type.expand_shorthands({o.key: split(o.text.strip("[]"))[0].strip("'\" ")})}
    except (SweeperError, IndexError):
        return {o.key}


def _annotation(o: Override, spec_type, joint: bool = False) -> Any:
    """The field's declared type; a shorthand (`model`) is a name. An unknown key is refused with
    the valid ones, as the study file's would be."""
    fields = spec_type.field_types()
    if o.key in fields:
        return fields[o.key]
    if joint:
        return None
    try:
        expanded = spec_type.expand_shorthands({o.key: o.text.split(",")[0].strip()})
    except SweeperError:
        expanded = {}  # a shorthand with a bad value: the spec's check names it
    if o.key in expanded:
        raise SweeperError(f"unknown field for experiment '{spec_type.experiment}'; valid fields: "
                           f"{', '.join(sorted(fields))}", o.where)
    return str


def _value(o: Override, spec_type) -> Any:
    return _typed(o.text, _annotation(o, spec_type), o)


def _axis(o: Override, spec_type, current: list | None) -> list:
    joint = bool(current) and all(isinstance(v, dict) for v in current)
    text = o.text
    values = _literal(text, o) if text.startswith("[") else None
    if text.startswith("[") and (not isinstance(values, list) or not values):
        raise SweeperError(f"expected a non-empty list [V1, V2, ...], got {text!r}", o.where)
    # a new joint axis: each value a dict of fields, under a name of the user's choosing
    joint = joint or (values is not None and o.key not in spec_type.field_types()
                      and all(isinstance(v, dict) for v in values))
    annotation = _annotation(o, spec_type, joint)
    if values is not None:
        if joint and not all(isinstance(v, dict) for v in values):
            raise SweeperError("is a joint axis (each value sets several fields): write its values as "
                               "[{\"FIELD\": VALUE, ...}, ...]", o.where)
        return [v if joint else _item(v, annotation, o) for v in values]
    if joint:
        raise SweeperError("is a joint axis (each value sets several fields): write its values as "
                           "[{\"FIELD\": VALUE, ...}, ...]", o.where)
    if typing.get_origin(annotation) is tuple:
        raise SweeperError(f"holds lists: write its values as a list of lists, e.g. [[{text}]]", o.where)
    return [_typed(part, annotation, o) for part in split(text)]


def _item(value: Any, annotation: Any, o: Override) -> Any:
    """One value of a literal list: text read as the field's type; a list for a list field."""
    if isinstance(value, str):
        return _typed(value, annotation, o)
    if isinstance(value, list):
        return tuple(value)
    return value  # a number or bool: the spec's own check judges it


def _literal(text: str, o: Override) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise SweeperError(f"cannot read {text!r} as a list", o.where) from None


def split(text: str) -> list[str]:
    """Comma-separated values; commas inside (), [] or {} belong to their value."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _typed(text: str, annotation: Any, o: Override) -> Any:
    """`text` read as a value of `annotation` (the spec's own checks then bound it)."""
    text = text.strip()
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if type(None) in typing.get_args(annotation) and text.lower() in _NONE:
            return None
        return _typed(text, args[0], o) if len(args) == 1 else text
    if typing.get_origin(annotation) is tuple:
        (item, *_rest) = typing.get_args(annotation)
        values = _literal(text, o) if text.startswith("[") else split(text)
        if not isinstance(values, list):
            raise SweeperError(f"expected a comma-separated list, got {text!r}", o.where)
        return tuple(_typed(v, item, o) if isinstance(v, str) else v for v in values)
    if annotation is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SweeperError(f"expected true or false, got {text!r}", o.where)
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)  # 1e3 is an integer written as a float
        except ValueError:
            number = None
        if number is None or not number.is_integer():
            raise SweeperError(f"expected an integer, got {text!r}", o.where)
        return int(number)
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise SweeperError(f"expected a number, got {text!r}", o.where) from None
    return text
