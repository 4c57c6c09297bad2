"""Digests: per-trial summaries of a table, computed once by `sweeper compact` for the trials it
merges and kept in the segment beside their parts, so that a figure reads a few numbers per trial
instead of streaming the trial's rows again every time it draws.

Why: at 10,000 trials the γ figures' first pass over `bn` (the per-trial counts below each
threshold and γ by layer: sweeper.analysis.reduce) reads 82 million rows for 1.1 million numbers,
every time the figures are drawn; compacted trials never change, so it is done once, when they are
merged. Trials not compacted yet (their own files, a rerun since) are still streamed, and the two
are put together: the result is the same (tests/test_digests.py).

A digest is registered under a name, for one table, with a `key` naming exactly what it computes
(a version and its parameters): a reader takes a stored digest only when the keys match, and
streams the rows otherwise. Stored as Parquet files in `<study>/_compacted/` named after the
segment, listed in the segment's manifest (sweeper.segments): they exist for readers when the
manifest does, and go with the segment (a dead compaction's leftovers are deleted with its parts).
A digest that fails to compute is left out with a warning: the rows are streamed instead.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from sweeper.registry import Registry

Outputs = dict[str, pa.Table]  # output name -> rows keyed by trial_id


@dataclass(frozen=True)
class Digest:
    table: str
    key: str  # what it computes (version, parameters): a stored digest of another key is not used
    columns: tuple[str, ...]  # the table's columns it reads
    categorical: tuple[str, ...]  # read as dictionaries
    compute: Callable[[Iterator[pa.RecordBatch]], Outputs]  # batches of many trials -> outputs


DIGESTS: Registry[Digest] = Registry("digest")
# the modules that register digests (imported on first use: the store layer does not import analysis
# at start-up; compaction runs where analysis is installed, as it is with sweeper)
MODULES = ("sweeper.analysis.digest",)
_loaded = False


def registered(table: str | None = None) -> dict[str, Digest]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in MODULES:
            importlib.import_module(module)
    return {name: DIGESTS[name] for name in DIGESTS.names() if table is None or DIGESTS[name].table == table}


def file_name(segment: str, table: str, name: str, output: str) -> str:
    """Where a segment keeps one output of a digest, in the study's `_compacted` folder: named after
    the segment, so that whatever deletes the segment's files finds it."""
    return f"{segment}.{table}.{name}.{output}.parquet"
