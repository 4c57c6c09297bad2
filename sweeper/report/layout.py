"""Where reports live in the store (`<store>/reports/<name>/...`, see `sweeper.report`), and the
reading and writing of their files. Only this module knows the report folders' names."""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any

import pyarrow.fs as pafs

from sweeper.store import Store

REPORTS = "reports"
SNAPSHOT = "snapshot.parquet"
SUMMARY = "summary.json"
_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}Z(-\d+)?$")


def reports_dir(store: Store) -> str:
    return store.path(REPORTS)


def report_path(store: Store, name: str, *parts: str) -> str:
    return store.path(REPORTS, name, *parts)


def figure_png_path(store: Store, name: str, study: str, figure: str) -> str:
    return report_path(store, name, "figures", study, f"{figure}.png")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_report_name(store: Store, when: dt.datetime) -> str:
    """A folder name for a report started at `when` (UTC); suffixed if that second is taken."""
    base = when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    taken = set(list_reports(store))
    name, n = base, 1
    while name in taken or store.exists(report_path(store, name)):
        n += 1
        name = f"{base}-{n:02d}"  # zero-padded: names keep sorting by time
    return name


def list_reports(store: Store) -> list[str]:
    """Report folder names, oldest first (complete or not)."""
    sel = pafs.FileSelector(reports_dir(store), allow_not_found=True)
    names = [i.base_name for i in store.fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
    return sorted(n for n in names if _NAME.match(n))


def report_figures(store: Store, name: str, study: str) -> list[str]:
    """The figures a report kept of a study (names, without .png)."""
    sel = pafs.FileSelector(report_path(store, name, "figures", study), allow_not_found=True)
    return [i.base_name[: -len(".png")] for i in store.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.base_name.endswith(".png")]


def read_bytes(store: Store, path: str) -> bytes | None:
    try:
        with store.fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def write_text(store: Store, path: str, text: str) -> None:
    store.write_bytes(path, text.encode())


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_clean(v) for v in obj]
    return obj


def as_json(obj: Any) -> str:
    """JSON for summary files: NaN becomes null, anything odd its str()."""
    return json.dumps(_clean(obj), indent=1, default=str, allow_nan=False) + "\n"


def prune(store: Store, keep: int, protect: str) -> list[str]:
    """Delete all but the newest `keep` report folders (never `protect`); 0 keeps every one."""
    if keep <= 0:
        return []
    names = [n for n in list_reports(store) if n != protect]
    doomed = names[: max(0, len(names) - (keep - 1))]
    for name in doomed:
        store.fs.delete_dir(report_path(store, name))
    return doomed
