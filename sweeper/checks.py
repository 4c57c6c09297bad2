"""Checks on what comes from outside (command-line options, study files, store paths), made before
any work: each refusal is one SweeperError naming the option or field and its valid range.

Two rules hold everywhere:
- a number is finite and inside its range. Python's float() reads "nan" and "inf", and every
  comparison with NaN is False, so a check written `if value < 0: refuse` lets NaN through: NaN
  CPUs per trial made Ray wait for ever, a NaN tolerance turned the nightly regression check off.
  Ranges are therefore written as what is valid (`low <= value`), which NaN fails;
- a path or name holds no control character. A newline in `--store` ended a crontab line and
  began one of the caller's choosing; in a report or a file name it forges lines.

Every numeric command-line option has its range in OPTION_RANGES: `sweeper.cli.build_parser`
puts them on the options of every command (those other modules add too), and a test checks
that no numeric option lacks one.
"""
from __future__ import annotations

import argparse
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError

#: Parquet stores integers as int64; a larger value cannot be stored, hashed into the same
#: column, or given to torch, numpy or Ray (seed=2**64 crashed the driver inside Tune).
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of valid numbers; `None` bounds are unbounded (but a value
    is always finite)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.integer and (value != int(value) or not INT64[0] <= int(value) <= INT64[1]):
            return False
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        if self.high is not None and not (value < self.high if self.high_open else value <= self.high):
            return False
        return True

    def describe(self) -> str:
        """The range as the messages say it: `at least 1`, `in (0, 1]`, `greater than 0`."""
        low, high = (None if b is None else _number(b) for b in (self.low, self.high))
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low is not None:
            return f"greater than {low}" if self.low_open else f"at least {low}"
        if high is not None:
            return f"less than {high}" if self.high_open else f"at most {high}"
        return "finite"

    def problem(self, value: Any, shown: str | None = None) -> str | None:
        """Why `value` is not valid (one phrase, showing it as `shown`), or None when it is."""
        if value in self:
            return None
        shown = repr(value) if shown is None else shown
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {'an integer' if self.integer else 'a number'}, got {shown}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self.describe()}, got {shown}"
        if self.integer and value != int(value):
            return f"expected an integer, got {shown}"
        return f"must be {self.describe()}, got {shown}"

    def check(self, value: Any, where: str) -> None:
        problem = self.problem(value)
        if problem:
            raise SweeperError(problem, where)


def _number(b: float) -> str:
    return str(int(b)) if b == int(b) and abs(b) < 1e16 else f"{b:g}"


def at_least(low: float, integer: bool = False) -> Range:
    return Range(low=low, integer=integer)


def positive(integer: bool = False) -> Range:
    return Range(low=0, low_open=True, integer=integer)


FRACTION = Range(0, 1)
SEED = Range(0, 2**32, high_open=True, integer=True)  # numpy's and torch's seeds, and any derived stream

# A trial's CPUs: a positive share of a node (fractions share a CPU); GPUs: none, a share, or some.
CPUS = positive()
GPUS = at_least(0)

#: The valid range of every numeric option, by its flag; the same flag means the same thing in
#: every command (`run`, `plan`, `submit`, `slurm` all take --cpus-per-trial).
OPTION_RANGES: dict[str, Range] = {
    "--cpus-per-trial": CPUS,
    "--gpus-per-trial": GPUS,
    "--max-failures": at_least(0, integer=True),  # retries of a lost trial; -1 meant "for ever" to Tune
    "--checkpoint-seconds": at_least(0),
    "--workers": at_least(1, integer=True),
    "--efficiency": Range(0, 1, low_open=True),
    "--tolerance": at_least(0),  # nightly: NaN would flag no regression, ever
    "--keep-reports": at_least(0, integer=True),
    "--threads": at_least(1, integer=True),
    "--trials": at_least(1, integer=True),  # bench: trials of the generated store
    "--nodes": at_least(1, integer=True),
    "--gpus-per-node": at_least(0, integer=True),
    "--cpus-per-node": at_least(1, integer=True),
}


class _Converter:
    """An argparse `type` that reads a number and refuses it outside its range: a SweeperError
    naming the flag (argparse lets it through, and sweeper.cli prints it as one line, exit 2)."""

    def __init__(self, base: type, valid: Range, flag: str):
        self.base, self.valid, self.flag = base, valid, flag
        self.__name__ = base.__name__  # argparse names the type in its messages

    def __call__(self, text: str):
        try:
            value = self.base(text)
        except (TypeError, ValueError):
            kind = "an integer" if self.base is int else "a number"
            raise SweeperError(f"expected {kind}, got {text!r}", self.flag) from None
        problem = self.valid.problem(value, text)
        if problem:
            raise SweeperError(problem, self.flag)
        return value


def apply_option_ranges(parser: argparse.ArgumentParser) -> None:
    """Give every numeric option of `parser` and its subcommands its range from OPTION_RANGES.
    A numeric option with no entry there still refuses NaN and infinities."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_option_ranges(sub)
        elif action.type in (int, float):
            flag = next((o for o in action.option_strings if o.startswith("--")), action.dest)
            valid = OPTION_RANGES.get(flag, Range(integer=action.type is int))
            action.type = _Converter(action.type, valid, flag)


def numeric_options(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, Any]:
    """Every option whose value is a number, as `command flag` -> its argparse type (for the test
    that each has a range)."""
    found: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(numeric_options(sub, f"{prefix}{name} "))
        elif action.type in (int, float) or isinstance(action.type, _Converter):
            flag = next((o for o in action.option_strings if o.startswith("--")), action.dest)
            found[f"{prefix}{flag}"] = action.type
    return found


# -- text ------------------------------------------------------------------------------------------
def control_character(text: str) -> str | None:
    """The first control or line-separator character of `text`, or None."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return ch
    return None


#: A study's name is a folder of the store and a word of reports and crontab lines: matched whole
#: (`fullmatch`: a `$` pattern accepts a trailing newline).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_study_name(value: Any, where: str) -> None:
    """A study name (a study file's `name`, `--name`): letters, digits, '.', '_', '-'."""
    if not isinstance(value, str) or not STUDY_NAME.fullmatch(value):
        raise SweeperError(f"must be letters, digits, '.', '_' or '-', got {value!r}", where)


def check_text(value: Any, where: str, what: str = "") -> None:
    """Refuse a path or name with a control character (newline, tab, escape, NUL, ...): it would end
    a crontab or report line, or forge one."""
    ch = control_character(str(value))
    if ch is not None:
        raise SweeperError(f"{what or 'contains'} a control character ({ch!r}) in {str(value)!r}; "
                           "paths and names must be printable", where)


def user_path(value: Any, where: str) -> Path:
    """A path the user gave, with `~` and `~name` expanded. For a `~name` with no such user pathlib
    raises RuntimeError ("Could not determine home directory"), which would be a traceback."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        home = str(value).split("/", 1)[0]
        raise SweeperError(f"{home!r} names no user's home folder on this machine (in {str(value)!r})", where) from None


def check_argv(argv: list[str]) -> None:
    """Refuse a command line whose arguments hold control characters, naming the option."""
    for i, arg in enumerate(argv):
        if control_character(arg) is None:
            continue
        flag = arg.split("=", 1)[0] if arg.startswith("--") and "=" in arg else None
        if flag is None and i and argv[i - 1].startswith("-") and "=" not in argv[i - 1]:
            flag = argv[i - 1]
        check_text(arg, flag or "argument", "has")
