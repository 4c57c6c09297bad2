"""Parameterised names in study files: `normal(std=0.05)`, `group(groups=8)`.

A sweep axis value stays one readable string (and one Parquet column), while a distribution or a
layer can still take parameters. The canonical form sorts the parameters, so equal settings give
equal trial ids.
"""
from __future__ import annotations

import ast
import re

from sweeper.errors import SweeperError

_CALL = re.compile(r"^\s*([A-Za-z_][\w+\-]*)\s*(?:\((.*)\))?\s*$")


def parse(text: str) -> tuple[str, dict[str, float | int | str]]:
    match = _CALL.match(text) if isinstance(text, str) else None
    if not match:
        raise SweeperError(f"cannot read {text!r}; expected NAME or NAME(key=value, ...)")
    name, args = match.group(1), match.group(2)
    params: dict[str, float | int | str] = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
            assert isinstance(call, ast.Call) and not call.args
            for kw in call.keywords:
                params[kw.arg] = ast.literal_eval(kw.value)
        except (SyntaxError, ValueError, AssertionError):
            raise SweeperError(f"cannot read the parameters of {text!r}; expected key=value pairs")
    return name, params


def format_call(name: str, params: dict) -> str:
    if not params:
        return name
    return f"{name}({', '.join(f'{k}={params[k]!r}' for k in sorted(params))})"


def check_params(text: str, params: dict, allowed: dict[str, type]) -> None:
    for key, value in params.items():
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise SweeperError(f"{text!r} takes no parameter {key!r}; valid parameters: {valid}")
        if not isinstance(value, allowed[key]) or isinstance(value, bool):
            raise SweeperError(f"{text!r}: parameter {key!r} must be a number, got {value!r}")
