"""Trial specs: typed, fully resolved descriptions of one trial, and their content-hashed ids.

A trial is a pure function of its spec. The id hashes only the fields that differ from their
defaults (open_lth's rule), sorted, together with the experiment's name: adding a new knob whose
default changes nothing leaves every existing id, and so every stored result, valid.
`tests/test_spec.py` pins a few ids so that an accidental change of the hash is caught.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from typing import Any, ClassVar

from sweeper.checks import INT64
from sweeper.errors import SweeperError

#: Bump only with a migration note: it is part of every trial id.
HASH_VERSION = 1
_FIELD_TYPES: dict[type, dict[str, Any]] = {}


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base of every experiment's spec. Subclasses are frozen dataclasses whose fields are
    str, int, float, bool or tuples of those, each with a default."""

    experiment: ClassVar[str] = ""
    #: The valid range of every int and float field (sweeper.checks.Range; a tuple field's range is
    #: its items'), checked on the resolved spec before `validate`, so that no check or trial ever
    #: computes with an absurd value. tests/test_reliability_input.py checks each kind lists every
    #: numeric field.
    RANGES: ClassVar[dict[str, Any]] = {}
    #: Fields that only say what a trial records once it has trained, never how it trains: two
    #: specs that differ only here run the same training (sweeper.reuse takes one's results for
    #: the other when the done one recorded at least as much).
    RECORDING: ClassVar[tuple[str, ...]] = ()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def field_types(cls) -> dict[str, Any]:
        # once per class: evaluating the annotations took most of `plan`'s time on a large grid
        if cls not in _FIELD_TYPES:
            hints = typing.get_type_hints(cls)
            _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        return _FIELD_TYPES[cls]

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "Spec":
        """Build a spec from study values: unknown fields and wrong types are refused by name,
        then `resolve` canonicalises names, RANGES bound each number and `validate` checks what
        depends on several fields."""
        types_ = cls.field_types()
        kwargs = {}
        for key, value in cls.expand_shorthands(dict(values)).items():
            if key not in types_:
                raise SweeperError(
                    f"unknown field for experiment '{cls.experiment}'; valid fields: "
                    f"{', '.join(sorted(types_))}",
                    key,
                )
            kwargs[key] = _coerce(value, types_[key], key)
        spec = cls(**kwargs)
        spec = spec.resolve()
        spec.check_ranges()
        spec.validate()
        return spec

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Spec":
        """The spec a `trials` row was written from (`to_row`: tuples as comma-joined text); a
        missing or empty column is its field's default (a row written before the field existed)."""
        values = {}
        for name, annotation in cls.field_types().items():
            value = row.get(name)
            if value is None:
                continue
            if typing.get_origin(annotation) is tuple and isinstance(value, str):
                item = typing.get_args(annotation)[0]
                parse = {bool: lambda v: v == "True", int: int, float: float}.get(item, str)
                value = [parse(v) for v in value.split(",") if v]
            values[name] = value
        return cls.from_values(values)

    def check_ranges(self) -> None:
        defaults = _defaults(type(self))
        for name, valid in self.RANGES.items():
            value = getattr(self, name)
            if value == defaults[name]:  # a default is valid (tests check): most fields, most trials
                continue
            for item in value if isinstance(value, tuple) else (value,):
                valid.check(item, name)

    @classmethod
    def expand_shorthands(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Hook: turn study shorthands (for example `model: resnet-110`) into fields."""
        return values

    def resolve(self) -> "Spec":
        """Hook: canonical names (aliases resolved) and implied values filled in."""
        return self

    def validate(self) -> None:
        """Hook: raise SweeperError(message, field) for impossible values."""

    # -- identity ------------------------------------------------------------------------------
    def non_default(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        return out

    @functools.cached_property  # a frozen spec's id never changes; plan and run ask for it often
    def trial_id(self) -> str:
        payload = {"experiment": self.experiment, "v": HASH_VERSION, **self.non_default()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @functools.cached_property
    def training_id(self) -> str:
        """The id of what the trial trains: its id with the RECORDING fields at their defaults."""
        defaults = _defaults(type(self))
        return dataclasses.replace(self, **{f: defaults[f] for f in self.RECORDING}).trial_id

    def records_within(self, done: "Spec") -> bool:
        """Whether `done`, a trial of the same training (`training_id`), recorded everything this
        spec records (hook: a spec with RECORDING fields says how they compare)."""
        return done == self

    def keeps_table(self, table: str) -> bool:
        """Whether `table` of such a done trial is one this spec records (it may have recorded more)."""
        return True

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_row(self) -> dict[str, Any]:
        """Flat scalar columns for the `trials` table (tuples become comma-joined strings, so
        that pandas can group by them)."""
        return {k: _scalar(v) for k, v in self.to_dict().items()}

    def replace(self, **changes: Any) -> "Spec":
        return type(self).from_values({**self.to_dict(), **changes})


@functools.lru_cache(maxsize=None)
def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _scalar(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
    return value


def _coerce(value: Any, annotation: Any, field: str) -> Any:
    """Coerce a study value to the field's declared type, or refuse it naming the field."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, item_type, field) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        raise SweeperError(f"expected true or false, got {value!r}", field)
    # Numbers are finite (NaN passes every `value < low` check) and integers fit the int64 of their
    # Parquet column; each kind's RANGES then bound them further.
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (isinstance(value, float) and not math.isfinite(value)) or value != int(value):
            raise SweeperError(f"expected an integer, got {value!r}", field)
        if not INT64[0] <= int(value) <= INT64[1]:
            raise SweeperError(f"must fit a 64-bit integer, got {value!r}", field)
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SweeperError(f"expected a number, got {value!r}", field)
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            raise SweeperError(f"must be a finite number, got {value!r}", field) from None
        if not math.isfinite(value):
            raise SweeperError(f"must be a finite number, got {value!r}", field)
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise SweeperError(f"expected a name, got {value!r}", field)
        return value
    if isinstance(annotation, types.UnionType):  # pragma: no cover - specs avoid optionals
        raise TypeError(f"{field}: optional fields are not allowed in specs")
    return value


def arrow_type(annotation: Any):
    """The Parquet column type of a spec field, so that every trial's row has the same schema."""
    import pyarrow as pa

    if typing.get_origin(annotation) is tuple or annotation is str:
        return pa.string()
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}[annotation]
