"""Compacted tables: which trials' rows live in merged files, and which file a reader takes each
trial's rows from. `sweeper.compact` writes them; sweeper.store reads through them.

Layout (beside the per-trial files, so that a glob over `<table>/*.parquet` reads them too):

    <store>/<study>/<table>/compacted-<segment>-<part>.parquet  many trials' rows, sorted by trial_id
    <store>/<study>/_compacted/<segment>.json                   the manifest: the commit point
    <store>/<study>/_compacted/<segment>.pending                who is writing it (until it is done)
    <store>/<study>/_compacted/<segment>.<table>.<digest>.<output>.parquet
                                                               per-trial summaries (sweeper.digests)

A *segment* is what one compaction wrote: per table, one or more *parts* (a part holds at most
PART_ROWS rows, in row groups of ROW_GROUP_ROWS with min/max statistics, each trial's rows
contiguous) and a manifest listing, per part, the trial ids it holds. The manifest is written last,
in one atomic step (a rename locally, a single PUT on an object store): a part that no manifest
names does not exist for readers.

Which file holds a trial's rows of a table, for a reader (exactly one, at any moment):
- its own file `<table>/<trial_id>.parquet` when there is one: a trial rerun after compaction
  writes its own file again, and that newer result wins;
- else the newest segment (segment names sort by time) whose manifest lists the trial there.
A compaction deletes the own files it merged only after its manifest is committed, so a trial is
always in one place or the other. Readers list the own files *before* they read the manifests (a
file deleted after the listing makes the read start again, see sweeper.store): a trial whose own
file was gone at the listing was committed to a manifest before it went.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow.fs as pafs

FOLDER = "_compacted"
PREFIX = "compacted-"  # trial ids are hex: no trial file is ever named like this
PART_ROWS = 16_000_000  # about 2,000 ResNet-110 trials' `bn` rows (8,288 each) per file
ROW_GROUP_ROWS = 1_048_576  # pyarrow's default: min/max statistics per million rows
FORMAT = 1  # the manifest's own version


def is_part(name: str) -> bool:
    """Whether a file name (no folder) is a compacted part rather than a trial's own file."""
    return name.startswith(PREFIX)


def part_name(segment: str, index: int) -> str:
    return f"{PREFIX}{segment}-{index:03d}.parquet"


@dataclass(frozen=True)
class Part:
    table: str
    path: str
    segment: str
    trials: frozenset
    rows: int


@dataclass
class Segments:
    """The committed segments of one study, as a reader uses them."""

    parts: dict[str, list[Part]] = field(default_factory=dict)  # table -> parts, oldest segment first
    holder: dict[str, dict[str, Part]] = field(default_factory=dict)  # table -> trial id -> newest part
    # table -> trial id -> "size:mtime_ns" of the own file the segment merged (to finish its deletion)
    stamps: dict[str, dict[str, str]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # live segment names, oldest first
    replaced: list[str] = field(default_factory=list)  # committed, but rewritten into a newer one
    # (table, segment) -> digest name -> {"key": ..., "files": {output: path}} (sweeper.digests)
    digests: dict[tuple[str, str], dict[str, dict]] = field(default_factory=dict)

    def doubled(self) -> bool:
        """Whether some trial is in two live parts of a table (two compactions ran at once)."""
        return any(sum(len(p.trials) for p in parts) != len(self.holder.get(t, {})) for t, parts in self.parts.items())

    def tables(self) -> list[str]:
        return sorted(self.parts)

    def has(self, table: str, trial_id: str) -> bool:
        return trial_id in self.holder.get(table, {})

    def digest(self, table: str, segment: str, name: str, key: str) -> dict[str, str] | None:
        """The files (output -> path) of the segment's digest `name` of `table`, if it was computed
        with `key` (sweeper.digests)."""
        entry = self.digests.get((table, segment), {}).get(name)
        return entry["files"] or None if entry is not None and entry.get("key") == key else None

    def undigested(self, table: str, name: str, key: str) -> bool:
        """Whether a live segment of `table` has no digest `name` computed with `key` (nor a note
        that computing it failed: a failure is not tried again and again)."""
        return any(self.digests.get((table, p.segment), {}).get(name, {}).get("key") != key
                   for p in self.parts.get(table, []))

    def plan(self, table: str, own: set[str], wanted: set[str] | None = None) -> list[tuple[Part, set[str] | None]]:
        """The parts a reader of `table` opens, each with the trial ids to take from it (None: all
        its rows): trials with no own file in `own`, held by that part as the newest, and in
        `wanted` (None: any)."""
        take: dict[str, set[str]] = {}
        for tid, part in self.holder.get(table, {}).items():
            if tid not in own and (wanted is None or tid in wanted):
                take.setdefault(part.path, set()).add(tid)
        out = []
        for part in self.parts.get(table, []):
            ids = take.get(part.path)
            if ids:
                out.append((part, None if ids == part.trials else ids))
        return out


def manifest_path(store, study: str, segment: str) -> str:
    return store.path(study, FOLDER, f"{segment}.json")


def pending_path(store, study: str, segment: str) -> str:
    return store.path(study, FOLDER, f"{segment}.pending")


def listing(store, study: str) -> list[pafs.FileInfo]:
    sel = pafs.FileSelector(store.path(study, FOLDER), allow_not_found=True)
    return [i for i in store.fs.get_file_info(sel) if i.type == pafs.FileType.File]


def read_segments(store, study: str) -> Segments:
    """Every committed manifest of the study (a manifest that cannot be parsed is an error that
    names it: its trials would otherwise vanish from every read)."""
    from sweeper.errors import SweeperError

    segs = Segments()
    names = sorted(i.base_name[: -len(".json")] for i in listing(store, study) if i.base_name.endswith(".json"))
    docs = {}
    for name in names:
        path = manifest_path(store, study, name)
        try:
            with store.fs.open_input_stream(path) as f:
                doc = json.loads(f.read().decode())
        except FileNotFoundError:
            continue  # a replaced manifest deleted since the listing
        except (ValueError, UnicodeDecodeError) as e:
            raise SweeperError(f"{store.url(study, FOLDER, name + '.json')} is not a compaction manifest ({e}); "
                               "move it aside and run `sweeper compact` again", "--store") from None
        if not isinstance(doc, dict) or doc.get("format", 0) > FORMAT:
            raise SweeperError(f"{store.url(study, FOLDER, name + '.json')}: a newer manifest format; upgrade "
                               "sweeper", "--store")
        docs[name] = doc
    # A segment rewritten into a newer one (whose manifest names it in `replaces`) is dead from the
    # moment that manifest lands; its files go after.
    replaced = {r for doc in docs.values() for r in doc.get("replaces", [])}
    segs.replaced = sorted(n for n in docs if n in replaced)
    for name, doc in docs.items():
        if name in replaced:
            continue
        segs.names.append(name)
        for table, entry in doc["tables"].items():
            for p in entry["parts"]:
                part = Part(table, store.path(study, table, p["file"]), name, frozenset(p["trials"]), int(p["rows"]))
                segs.parts.setdefault(table, []).append(part)
                for tid in part.trials:
                    segs.holder.setdefault(table, {})[tid] = part  # newest segment last: it wins
            segs.stamps.setdefault(table, {}).update(entry.get("stamps", {}))
            digests = {d: {"key": v["key"], "files": {o: store.path(study, FOLDER, f) for o, f in v.get("files", {}).items()}}
                       for d, v in entry.get("digests", {}).items()}
            if digests:
                segs.digests[(table, name)] = digests
    return segs


def stamp(info: pafs.FileInfo) -> str:
    """A file's identity for "is this still the file that was merged": size and modification time
    (a rerun's rewrite differs in one or the other)."""
    return f"{info.size}:{info.mtime_ns}"
