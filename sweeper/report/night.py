"""Nightly reports: per-configuration snapshots, the comparison with the previous night, and the
report itself (Markdown and self-contained HTML), all kept under `<store>/reports/`.

Layout (one folder per night, named by its UTC start time so that names sort by date):

    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/report.md        links the figures (previous night's too)
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/report.html      the same, figures embedded (base64 <img>)
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/summary.json     what ran, failed, changed: for machines
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/figures/<study>/<figure>.png   tonight's figures, kept
    <store>/reports/<YYYY-MM-DDTHHMMSSZ>/snapshot.parquet per-configuration means, written last
    <store>/reports/logs/nightly.log                      the cron job's log (appended)
    <store>/reports/nightly.lock                          held while a nightly runs

A configuration is a trial spec without its seed: the snapshot holds, per configuration of each
study's current plan, the mean (over seeds) of the study's metric and the trial ids behind it. The
next night compares against the newest earlier snapshot that has the study. Every file is written
once, atomically (aside, then renamed); nothing here is read, modified and written back. Only
report folders are ever deleted (retention), never results.

This module reads Parquet and writes text; like `sweeper.analysis` it never imports torch.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeper.store import Store

REPORTS = "reports"
SNAPSHOT = "snapshot.parquet"
SUMMARY = "summary.json"
_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}Z(-\d+)?$")

DEFAULT_METRIC = ("test_acc", "max")  # for an experiment kind this code does not know


def metric_of(experiment: str) -> tuple[str, str]:
    """The metric a study's nightly tracks, and which way is better: its experiment's own."""
    from sweeper.experiments import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        return DEFAULT_METRIC
    return EXPERIMENTS[experiment].metric, EXPERIMENTS[experiment].mode


# -- layout ------------------------------------------------------------------------------------
def reports_dir(store: Store) -> str:
    return store.path(REPORTS)


def report_path(store: Store, name: str, *parts: str) -> str:
    return store.path(REPORTS, name, *parts)


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


def read_bytes(store: Store, path: str) -> bytes | None:
    try:
        with store.fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def load_snapshot(store: Store, name: str) -> pd.DataFrame | None:
    """A report's snapshot, or None when that report never completed (no snapshot)."""
    data = read_bytes(store, report_path(store, name, SNAPSHOT))
    if data is None:
        return None
    try:
        return pq.read_table(pa.BufferReader(data)).to_pandas()
    except Exception:  # a damaged snapshot is treated as absent: the night before it is used
        return None


def previous_snapshots(store: Store, studies: list[str], before: str) -> dict[str, tuple[str, pd.DataFrame]]:
    """For each study, the newest complete report older than `before` that has it: name and rows."""
    found: dict[str, tuple[str, pd.DataFrame]] = {}
    for name in reversed([n for n in list_reports(store) if n < before]):
        if len(found) == len(studies):
            break
        snap = load_snapshot(store, name)
        if snap is None or snap.empty:
            continue
        for study in studies:
            if study not in found and (snap["study"] == study).any():
                found[study] = (name, snap[snap["study"] == study].reset_index(drop=True))
    return found


def prune(store: Store, keep: int, protect: str) -> list[str]:
    """Delete all but the newest `keep` report folders (never `protect`); 0 keeps every one."""
    if keep <= 0:
        return []
    names = [n for n in list_reports(store) if n != protect]
    doomed = names[: max(0, len(names) - (keep - 1))]
    for name in doomed:
        store.fs.delete_dir(report_path(store, name))
    return doomed


# -- snapshots ---------------------------------------------------------------------------------
def config_key(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def snapshot_rows(study: str, metric: str, configs: dict[str, dict[str, Any]], labels: dict[str, str],
                  members: dict[str, list[str]], trials: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (config key -> spec values without the seed), the mean, spread and count
    of `metric` over its done trials (`trials`: the study's trials rows: trial_id, status, metric,
    code_version)."""
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "status", metric, "code_version"])
    done = trials[trials["status"] == "done"].set_index("trial_id")
    rows = []
    for key, config in configs.items():
        ids = sorted(members[key])
        have = [t for t in ids if t in done.index]
        values = (pd.to_numeric(done.loc[have, metric], errors="coerce").dropna()
                  if have and metric in done else pd.Series(dtype=float))
        versions = sorted({str(v) for v in done.loc[have, "code_version"]}) if have and "code_version" in done else []
        rows.append({
            "study": study,
            "config_key": key,
            "config": json.dumps(config, sort_keys=True, default=str),
            "label": labels.get(key, key),
            "metric": metric,
            "mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std(ddof=0)) if len(values) else math.nan,
            "n": int(len(values)),
            "trial_ids": ",".join(ids),
            "done_ids": ",".join(have),
            "code_versions": ",".join(versions),
        })
    columns = ["study", "config_key", "config", "label", "metric", "mean", "std", "n",
               "trial_ids", "done_ids", "code_versions"]
    return pd.DataFrame(rows, columns=columns)


def snapshot_bytes(frame: pd.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


# -- comparison --------------------------------------------------------------------------------
@dataclass
class Moved:
    label: str
    before: float
    after: float
    n: int
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (before, after)

    @property
    def delta(self) -> float:
        return self.after - self.before

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "before": self.before, "after": self.after, "delta": self.delta,
                "n": self.n, "changed": {k: list(v) for k, v in self.changed.items()}}


@dataclass
class Comparison:
    previous: str | None  # the report compared against (None: first night for this study)
    metric: str
    tolerance: float
    new_trials: list[str] = field(default_factory=list)
    regressions: list[Moved] = field(default_factory=list)
    improvements: list[Moved] = field(default_factory=list)
    within: list[Moved] = field(default_factory=list)  # compared, moved no more than tolerance
    new_configs: list[str] = field(default_factory=list)  # labels
    retired_configs: list[str] = field(default_factory=list)
    no_result: list[str] = field(default_factory=list)  # configurations with no done trial tonight

    @property
    def changed(self) -> bool:
        return bool(self.new_trials or self.regressions or self.improvements or self.new_configs
                    or self.retired_configs)

    def to_json(self) -> dict[str, Any]:
        return {
            "previous": self.previous, "metric": self.metric, "tolerance": self.tolerance,
            "changed": self.changed, "new_trials": self.new_trials,
            "regressions": [m.to_json() for m in self.regressions],
            "improvements": [m.to_json() for m in self.improvements],
            "within_tolerance": len(self.within),
            "largest_move_within": max((abs(m.delta) for m in self.within), default=0.0),
            "new_configs": self.new_configs, "retired_configs": self.retired_configs,
            "no_result": self.no_result,
        }


_EPS = 1e-9  # a move of exactly the tolerance is within it, whatever the float rounding


def _ids(cell: Any) -> set[str]:
    return {t for t in str(cell or "").split(",") if t}


def compare(previous: tuple[str, pd.DataFrame] | None, tonight: pd.DataFrame, tolerance: float,
            direction: str = "max") -> Comparison:
    """Tonight's snapshot of one study against the previous one.

    Configurations are matched by their full spec (every spec field but the seed). One that no
    longer matches (a recipe value of the study changed, say lr) is paired with the previous
    configuration at the same point of the study's grid (equal on every field that varies across
    tonight's configurations), when exactly one is there: the report then names the fields that
    changed, and its accuracy is compared like any other."""
    metric = str(tonight["metric"].iloc[0]) if len(tonight) else DEFAULT_METRIC[0]
    out = Comparison(previous[0] if previous else None, metric, tolerance)
    now_done = set().union(*(_ids(c) for c in tonight["done_ids"])) if len(tonight) else set()
    out.no_result = [r.label for r in tonight.itertuples() if not r.n]
    if previous is None:
        out.new_trials = sorted(now_done)
        out.new_configs = [r.label for r in tonight.itertuples() if r.n]
        return out
    before = previous[1]
    before_done = set().union(*(_ids(c) for c in before["done_ids"])) if len(before) else set()
    out.new_trials = sorted(now_done - before_done)

    now_cfg = {r.config_key: json.loads(r.config) for r in tonight.itertuples()}
    old_cfg = {r.config_key: json.loads(r.config) for r in before.itertuples()}
    pairs = [(k, k) for k in now_cfg if k in old_cfg]
    un_now = [k for k in now_cfg if k not in old_cfg]
    un_old = [k for k in old_cfg if k not in now_cfg]
    fields = sorted(set().union(*now_cfg.values())) if now_cfg else []
    varying = [f for f in fields if len({json.dumps(c.get(f), default=str) for c in now_cfg.values()}) > 1]

    def point(config: dict[str, Any]) -> str:
        return json.dumps([config.get(f) for f in varying], default=str)

    for k in list(un_now):
        same = [o for o in un_old if point(old_cfg[o]) == point(now_cfg[k])]
        rivals = [n for n in un_now if point(now_cfg[n]) == point(now_cfg[k])]
        if len(same) == 1 and len(rivals) == 1:
            pairs.append((k, same[0]))
            un_now.remove(k)
            un_old.remove(same[0])

    now_rows = tonight.set_index("config_key")
    old_rows = before.set_index("config_key")
    for k_now, k_old in pairs:
        a, b = now_rows.loc[k_now], old_rows.loc[k_old]
        if not a["n"] or not b["n"] or math.isnan(a["mean"]) or math.isnan(b["mean"]):
            continue
        changed = {f: (old_cfg[k_old].get(f), now_cfg[k_now].get(f))
                   for f in sorted(set(old_cfg[k_old]) | set(now_cfg[k_now]))
                   if old_cfg[k_old].get(f) != now_cfg[k_now].get(f)}
        moved = Moved(str(a["label"]), float(b["mean"]), float(a["mean"]), int(a["n"]), changed)
        worse = -moved.delta if direction == "max" else moved.delta
        if worse > tolerance + _EPS:
            out.regressions.append(moved)
        elif -worse > tolerance + _EPS:
            out.improvements.append(moved)
        else:
            out.within.append(moved)
    out.new_configs = [str(now_rows.loc[k, "label"]) for k in un_now if now_rows.loc[k, "n"]]
    out.retired_configs = [str(old_rows.loc[k, "label"]) for k in un_old]
    out.regressions.sort(key=lambda m: m.delta if direction == "max" else -m.delta)
    return out


# -- rendering ---------------------------------------------------------------------------------
# A report is a list of blocks rendered twice: to Markdown (figures linked) and to HTML (figures
# embedded), so the two always say the same thing.
@dataclass
class Figure:
    title: str
    now_rel: str | None  # path relative to the report folder
    now_png: bytes | None
    before_rel: str | None  # relative to the report folder (../<previous>/figures/...)
    before_png: bytes | None
    before_name: str | None
    same: bool = False  # byte-identical to the previous night's


Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("ul", [text]) | ("table", header, rows) | ("figures", [Figure])


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "figures":
            out.append("| previous night | tonight |")
            out.append("|---|---|")
            for fig in block[1]:
                before = (f"![{fig.title}, {fig.before_name}]({fig.before_rel})" if fig.before_rel
                          else "(none)")
                now = f"![{fig.title}, tonight]({fig.now_rel})" if fig.now_rel else "(not drawn)"
                note = " (unchanged)" if fig.same else ""
                out.append(f"| **{fig.title}**<br>{before} | **{fig.title}**{note}<br>{now} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<em>{html.escape(alt)}: none</em>"
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%}.figs td{width:50%}code{background:#f3f3f3;padding:0 .2em}"""


def to_html(blocks: list[Block], title: str) -> str:
    out = ["<!doctype html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "figures":
            out.append('<table class="figs"><tr><th>previous night</th><th>tonight</th></tr>')
            for fig in block[1]:
                note = " (unchanged)" if fig.same else ""
                before = _img(fig.before_png, f"{fig.title}, {fig.before_name or 'previous night'}")
                out.append(
                    f"<tr><td><b>{html.escape(fig.title)}</b> ({html.escape(fig.before_name or 'none')})<br>{before}</td>"
                    f"<td><b>{html.escape(fig.title)}</b>{note}<br>{_img(fig.now_png, fig.title + ', tonight')}</td></tr>"
                )
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** spans into HTML (the only inline markup reports use)."""
    parts = html.escape(text).split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)


def fmt_metric(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def png_digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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


def figure_png_path(store: Store, name: str, study: str, figure: str) -> str:
    return report_path(store, name, "figures", study, f"{figure}.png")


# -- one night -----------------------------------------------------------------------------------
@dataclass
class StudyNight:
    """What the nightly did for one study, and what it found."""

    study: str
    file: str
    experiment: str = "train"
    planned: int = 0
    skipped: int = 0  # already done (and not stale-rerun): not run tonight
    new: int = 0  # planned trials the store had no row for
    retried: int = 0  # planned trials whose last row was `failed`
    stale: list[str] = field(default_factory=list)  # done under another code version
    stale_rerun: bool = False
    ran: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # tonight's failed trials -> error
    missing: int = 0
    seconds: float = 0.0
    error: str | None = None  # the study could not run at all
    figures: dict[str, bytes] = field(default_factory=dict)  # figure -> tonight's PNG
    figure_errors: dict[str, str] = field(default_factory=dict)
    snapshot: pd.DataFrame | None = None
    comparison: Comparison | None = None

    @property
    def failures(self) -> bool:
        return bool(self.error or self.failed or self.missing or self.figure_errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study, "file": self.file, "experiment": self.experiment,
            "planned": self.planned, "skipped": self.skipped, "ran": self.ran, "new": self.new,
            "retried": self.retried, "stale": self.stale, "stale_rerun": self.stale_rerun,
            "done": self.done, "failed": self.failed, "missing": self.missing, "seconds": self.seconds,
            "error": self.error, "figures": sorted(self.figures), "figure_errors": self.figure_errors,
            "comparison": self.comparison.to_json() if self.comparison else None,
        }


def _moved_rows(moved: list[Moved]) -> list[list[str]]:
    rows = []
    for m in moved:
        changed = ", ".join(f"`{k}` {a!r} → {b!r}" for k, (a, b) in m.changed.items()) or "same spec"
        rows.append([m.label, fmt_metric(m.before), fmt_metric(m.after), f"{m.delta:+.4f}", m.n, changed])
    return rows


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _ids_list(ids: list[str], limit: int = 20) -> str:
    shown = ", ".join(f"`{t}`" for t in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def build_report(meta: dict[str, Any], nights: list[StudyNight], store: Store, name: str) -> list[Block]:
    """The report's blocks. `meta`: started, seconds, status, exit_code, code_version, host, store,
    tolerance, rerun_stale."""
    tol = meta["tolerance"]
    n_fail = sum(len(n.failed) + n.missing for n in nights)
    n_reg = sum(len(n.comparison.regressions) for n in nights if n.comparison)
    broken = [n.study for n in nights if n.error or n.figure_errors]
    if meta["status"] == "ok":
        verdict = f"All well: nothing failed and no configuration fell by more than {tol:g}."
    else:
        parts = []
        if n_reg:
            parts.append(f"{n_reg} regression{'s' * (n_reg != 1)} beyond {tol:g}")
        if n_fail:
            parts.append(f"{n_fail} failed or missing trial{'s' * (n_fail != 1)}")
        if broken:
            parts.append(f"errors in {', '.join(broken)}")
        verdict = "Attention: " + "; ".join(parts) + "."
    policy = ("rerun trials whose code version differs from tonight's (`--rerun-stale`)" if meta["rerun_stale"]
              else "keep results of older code versions (rerun them with `--rerun-stale`)")
    blocks: list[Block] = [
        ("h1", f"Nightly sweep {meta['started']}: {meta['status'].upper()}"),
        ("p", verdict),
        ("ul", [
            f"store: `{meta['store']}`",
            f"code version: `{meta['code_version']}` on {meta['host']}",
            f"started {meta['started']}, took {fmt_seconds(meta['seconds'])}",
            f"regression: a configuration's mean metric (seeds averaged) moved the wrong way by more than {tol:g}",
            f"stale policy: {policy}",
            f"exit status: {meta['exit_code']}",
        ]),
        ("h2", "Summary"),
        ("table", ["study", "planned", "ran", "done", "failed", "missing", "stale kept", "took", "since previous report"],
         [[n.study, n.planned, n.ran, n.done, len(n.failed), n.missing,
           0 if n.stale_rerun else len(n.stale), fmt_seconds(n.seconds), _change_line(n)] for n in nights]),
    ]
    for n in nights:
        blocks += _study_blocks(n, store, name, tol)
    return blocks


def _change_line(n: StudyNight) -> str:
    c = n.comparison
    if n.error and c is None:
        return "did not run"
    if c is None or c.previous is None:
        return "first report"
    if not c.changed:
        return "no change"
    parts = []
    for count, what in ((len(c.new_trials), "new trials"), (len(c.regressions), "regressions"),
                        (len(c.improvements), "improvements"), (len(c.new_configs), "new configurations"),
                        (len(c.retired_configs), "retired configurations")):
        if count:
            parts.append(f"{count} {what}")
    return ", ".join(parts)


def _study_blocks(n: StudyNight, store: Store, name: str, tol: float) -> list[Block]:
    blocks: list[Block] = [("h2", f"{n.study}"), ("p", f"Study file `{n.file}`, experiment `{n.experiment}`.")]
    ran: list[str] = []
    if n.error:
        ran.append(f"the study could not run: {n.error}")
    if n.ran:
        stale_runs = len(n.stale) if n.stale_rerun else 0
        ran.append(f"ran {n.ran} trial{'s' * (n.ran != 1)} ({n.new} new, {n.retried} retried after a failure, "
                   f"{stale_runs} stale reruns) in {fmt_seconds(n.seconds)}: {n.done} done, {len(n.failed)} failed, "
                   f"{n.missing} missing")
    elif not n.error:
        ran.append(f"nothing to do: all {n.planned} trials were already in the store")
    if n.skipped and (n.ran or n.error):
        ran.append(f"{n.skipped} trial{'s' * (n.skipped != 1)} already done, not run again")
    if n.stale and not n.stale_rerun:
        ran.append(f"{len(n.stale)} done trial{'s' * (len(n.stale) != 1)} ran under an older code version; kept "
                   f"(stale policy: keep; `--rerun-stale` reruns them)")
    for fig, err in n.figure_errors.items():
        ran.append(f"figure {fig} could not be drawn: {err}")
    blocks += [("h3", "What ran"), ("ul", ran)]
    if n.failed:
        blocks.append(("table", ["failed trial", "error"],
                       [[f"`{t}`", _first_line(e)] for t, e in sorted(n.failed.items())]))

    c = n.comparison
    if c is not None:
        if c.previous is None:
            blocks += [("h3", "Changes"), ("p", "First report for this study: nothing to compare with yet.")]
            if c.new_trials:
                blocks.append(("ul", [f"{len(c.new_trials)} trials in the store: {_ids_list(c.new_trials)}"]))
        else:
            blocks.append(("h3", f"Changes since {c.previous}"))
            if not c.changed:
                blocks.append(("p", f"No change: no new trials, and no configuration's mean {c.metric} moved by "
                                    f"more than {tol:g} (largest move {max((abs(m.delta) for m in c.within), default=0):.4f})."))
            header = ["configuration", "previous", "tonight", "Δ", "seeds", "changed fields"]
            if c.regressions:
                blocks += [("p", f"**Regressions**: mean {c.metric} worse by more than {tol:g}."),
                           ("table", header, _moved_rows(c.regressions))]
            if c.improvements:
                blocks += [("p", f"Improvements: mean {c.metric} better by more than {tol:g}."),
                           ("table", header, _moved_rows(c.improvements))]
            items = []
            if c.new_trials:
                items.append(f"{len(c.new_trials)} new trial{'s' * (len(c.new_trials) != 1)}: {_ids_list(c.new_trials)}")
            if c.new_configs:
                items.append(f"new configurations: {', '.join(c.new_configs)}")
            if c.retired_configs:
                items.append(f"configurations no longer in the study: {', '.join(c.retired_configs)}")
            if c.within and c.changed:
                items.append(f"{len(c.within)} configurations within ±{tol:g} "
                             f"(largest move {max(abs(m.delta) for m in c.within):.4f})")
            if items:
                blocks.append(("ul", items))
        if c.no_result:
            blocks.append(("p", f"No result tonight for: {', '.join(c.no_result)}."))
    if n.snapshot is not None and len(n.snapshot):
        snap = n.snapshot.head(60)
        metric = str(snap["metric"].iloc[0])
        blocks += [("h3", f"Results ({metric}, mean over seeds)"),
                   ("table", ["configuration", "mean", "std", "seeds", "code versions"],
                    [[r.label, fmt_metric(r.mean), fmt_metric(r.std), r.n, r.code_versions] for r in snap.itertuples()])]
        if len(n.snapshot) > len(snap):
            blocks.append(("p", f"... and {len(n.snapshot) - len(snap)} more configurations (see {SNAPSHOT})."))
    if n.figures or (c and c.previous):
        previous = c.previous if c else None
        figs = []
        names = sorted(set(n.figures) | (set(_previous_figures(store, previous, n.study)) if previous else set()))
        for fig in names:
            now = n.figures.get(fig)
            before = read_bytes(store, figure_png_path(store, previous, n.study, fig)) if previous else None
            figs.append(Figure(
                title=fig,
                now_rel=f"figures/{n.study}/{fig}.png" if now is not None else None,
                now_png=now,
                before_rel=f"../{previous}/figures/{n.study}/{fig}.png" if before is not None else None,
                before_png=before,
                before_name=previous if before is not None else None,
                same=before is not None and png_digest(before) == png_digest(now),
            ))
        if figs:
            blocks += [("h3", "Figures"), ("figures", figs)]
    return blocks


def _previous_figures(store: Store, name: str, study: str) -> list[str]:
    sel = pafs.FileSelector(report_path(store, name, "figures", study), allow_not_found=True)
    return [i.base_name[: -len(".png")] for i in store.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.base_name.endswith(".png")]
