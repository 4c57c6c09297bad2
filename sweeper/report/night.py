"""The nightly's report: per study, what ran, failed and changed since the previous report, its
results and its figures beside the previous night's; and above them, the night's verdict and summary.
`build_report` returns blocks (`sweeper.report.render`); `sweeper.nightly.run` writes them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sweeper.report.compare import Comparison, Moved
from sweeper.report.layout import SNAPSHOT, figure_png_path, read_bytes, report_figures
from sweeper.report.render import Block, Figure, fmt_metric, fmt_seconds, png_digest, results_blocks
from sweeper.report.study import Overview, axis_blocks, failed_table, labels
from sweeper.store import Store


@dataclass
class StudyNight:
    """What the nightly did for one study, and what it found."""

    study: str
    file: str
    experiment: str = "train"
    planned: int = 0
    skipped: int = 0  # already done (and not stale-rerun): not run tonight
    reused: int = 0  # copied from another study of the store that trained them the same way (sweeper.reuse)
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
    overview: Overview | None = None  # every planned trial's status and metric (sweeper.report.study)
    comparison: Comparison | None = None

    @property
    def failures(self) -> bool:
        return bool(self.error or self.failed or self.missing or self.figure_errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study, "file": self.file, "experiment": self.experiment,
            "planned": self.planned, "skipped": self.skipped, "reused": self.reused, "ran": self.ran, "new": self.new,
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
    elif not n.error and not n.reused:
        ran.append(f"nothing to do: all {n.planned} trials were already in the store")
    if n.reused:
        ran.append(f"{n.reused} trial{'s' * (n.reused != 1)} copied from other studies of the store, which "
                   "trained them the same way (their rows' `reused_from` names each)")
    if n.skipped and (n.ran or n.error):
        ran.append(f"{n.skipped} trial{'s' * (n.skipped != 1)} already done, not run again")
    if n.stale and not n.stale_rerun:
        ran.append(f"{len(n.stale)} done trial{'s' * (len(n.stale) != 1)} ran under an older code version; kept "
                   f"(stale policy: keep; `--rerun-stale` reruns them)")
    for fig, err in n.figure_errors.items():
        ran.append(f"figure {fig} could not be drawn: {err}")
    blocks += [("h3", "What ran"), ("ul", ran)]
    if n.failed:  # the table `sweeper report` shows, of tonight's failures
        blocks += failed_table(n.failed, labels(n.overview, n.failed) if n.overview is not None else None)

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
    blocks += results_blocks(n.snapshot, rest_in=SNAPSHOT)
    if n.overview is not None:  # the per-axis tables of `sweeper report`, one renderer for both
        blocks += axis_blocks(n.overview, level="h3")
    if n.figures or (c and c.previous):
        previous = c.previous if c else None
        figs = []
        names = sorted(set(n.figures) | (set(report_figures(store, previous, n.study)) if previous else set()))
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

