"""One nightly: under the store's lock, each study runs what the store lacks, its figures are
redrawn, its snapshot compared with the previous report's, and the night's report written (the
steps and exit statuses in `sweeper.nightly`)."""
from __future__ import annotations

import dataclasses
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sweeper.compact import maybe_compact
from sweeper.errors import SweeperError
from sweeper.nightly.lock import NightlyLock
from sweeper.checks import OPTION_RANGES
from sweeper.preflight import check_environment
from sweeper.report.compare import compare
from sweeper.report.layout import (REPORTS, SNAPSHOT, SUMMARY, as_json, figure_png_path, new_report_name, now_utc,
                                   prune, report_path, write_text)
from sweeper.report.night import StudyNight, build_report
from sweeper.report.render import fmt_seconds, to_html, to_markdown
from sweeper.report.snapshot import metric_of, previous_snapshots, snapshot_bytes
from sweeper.report.study import of_study
from sweeper.store import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_REGRESSION = 0, 1, 2, 3, 4


# -- one study -----------------------------------------------------------------------------------
def _code_versions(store: Store, study: str) -> dict[str, Any]:
    rows = store.read(study, "trials", columns=["trial_id", "code_version"])  # own files and compacted parts
    if "code_version" not in rows:
        return {}
    return dict(zip(rows["trial_id"], rows["code_version"]))


def _run_study(study, path: str, store: Store, current: str, *, address, data_root, rerun_stale: bool,
               say, wait_for_resources: float | None = None, trackers=None) -> StudyNight:
    from sweeper.orchestration.sweep import run_study

    night = StudyNight(study=study.name, file=path, experiment=study.experiment, stale_rerun=rerun_stale)
    started = time.perf_counter()
    try:
        specs = study.specs()
        plan = {s.trial_id for s in specs}
        before = store.trial_status(study.name)
        versions = _code_versions(store, study.name)
        night.planned = len(plan)
        night.new = len(plan - before.done - set(before.failed))
        night.retried = len(plan & set(before.failed))
        night.stale = sorted(t for t in plan & before.done if versions.get(t) != current)
        rerun = set(night.stale) if rerun_stale else set()
        if night.stale:
            verb = "rerunning" if rerun_stale else "keeping"
            say(f"{study.name}: {len(night.stale)} trials done under another code version; {verb} them "
                f"(current {current})")
        summary = run_study(study, store, address=address, data_root=data_root, rerun=rerun, say=say,
                            wait_for_resources=wait_for_resources, trackers=trackers)
        night.skipped, night.ran, night.done = summary.skipped, summary.ran, summary.done
        night.reused = summary.reused
        night.failed, night.missing = dict(summary.failed), summary.missing
    except KeyboardInterrupt:
        raise
    except SweeperError as e:
        night.error = str(e)
    except Exception as e:  # noqa: BLE001 - one broken study must not cost the others their night
        night.error = f"{type(e).__name__}: {e}"
        say("".join(traceback.format_exception(e)).rstrip())
    if night.error:
        say(f"{study.name}: could not run: {night.error}")
    night.seconds = time.perf_counter() - started
    return night


def _draw(study, store: Store, name: str, night: StudyNight) -> None:
    """Redraw the study's figures into the store and keep a copy of each PNG with the report."""
    from sweeper.analysis.cohort import Plan
    from sweeper.analysis.draw import draw_study

    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = None if store.local else Path(tmp)
            # the study file's current plan: trials of an earlier recipe stay out (run_study recorded
            # it in the store as its sweep began; a night that could not start leaves the store as it was)
            plan = Plan.of(study)
            drawn = draw_study(store, study.name, out=out, names=study.figures or None, plan=plan)
            for key, files in sorted(drawn.written.items()):
                figure = key.split("/", 1)[1]
                for f in files:
                    if not store.local:  # object store: upload what was drawn aside
                        store.write_bytes(store.path(study.name, "figures", f.name), f.read_bytes())
                    if f.suffix == ".png":
                        data = f.read_bytes()
                        store.write_bytes(figure_png_path(store, name, study.name, figure), data)
                        night.figures[figure] = data
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - reported, and the night counts as failed
        night.figure_errors["figures"] = f"{type(e).__name__}: {e}"


# -- the night -----------------------------------------------------------------------------------
@dataclasses.dataclass
class NightResult:
    exit_code: int
    report: str | None  # the report's folder in the store
    nights: list[StudyNight]


def run_nightly(
    study_paths: list[str],
    store_uri: str,
    *,
    address: str | None = None,
    data_root: str | None = None,
    quick: bool = False,
    scale: str | None = None,
    rerun_stale: bool = False,
    tolerance: float = 0.02,
    keep_reports: int = 30,
    say: Callable[[str], None] = print,
    wait_for_resources: float | None = None,
    overrides: list[str] | None = None,
    name: str | None = None,
    trackers: list | None = None,
) -> NightResult:
    """One nightly: run, redraw, compare, report. Raises LockHeld when another nightly runs and
    SweeperError for bad input; trial failures and regressions are in the result's exit code.
    `overrides` (`--set` texts) apply to every study; `name` renames the one study."""
    from sweeper.version import code_version

    started = now_utc()
    t0 = time.perf_counter()
    OPTION_RANGES["--tolerance"].check(tolerance, "--tolerance")  # NaN would flag no regression, ever
    store = Store(store_uri)
    # Everything checked before the store sees a write (a refusal leaves no trace); then the
    # store's first file, and the lock.
    scale = "quick" if quick else (scale or "full")
    studies = load_studies(study_paths, scale, overrides, name)
    check_environment(studies, store, data_root, address, files=study_paths, marker=False)
    store.write_marker()
    with NightlyLock(store, say):  # first, so that a second nightly exits at once
        say(f"== sweeper nightly {started.isoformat(timespec='seconds')} on {socket.gethostname()}: "
            f"{len(study_paths)} stud{'y' if len(study_paths) == 1 else 'ies'} -> {store.uri}")
        current = code_version()
        nights = []
        for path, study in zip(study_paths, studies):
            night = _run_study(study, str(Path(path).resolve()), store, current, address=address,
                               data_root=data_root, rerun_stale=rerun_stale, say=say,
                               wait_for_resources=wait_for_resources, trackers=trackers)
            nights.append(night)
            maybe_compact(store, study.name, say)  # many small files merged; figures then read few
        name = new_report_name(store, started)
        previous = previous_snapshots(store, [s.name for s in studies], before=name)
        snapshots = []
        for study, night in zip(studies, nights):
            _draw(study, store, name, night)
            try:
                night.overview = of_study(study, store)  # what `sweeper report` shows, its snapshot too
                night.snapshot = night.overview.snapshot
            except Exception as e:  # noqa: BLE001
                night.error = night.error or f"snapshot: {type(e).__name__}: {e}"
                continue
            snapshots.append(night.snapshot)
            night.comparison = compare(previous.get(study.name), night.snapshot, tolerance,
                                       metric_of(study.experiment)[1])
        failures = any(n.failures for n in nights)
        regressions = any(n.comparison and n.comparison.regressions for n in nights)
        code = EXIT_FAILED if failures else EXIT_REGRESSION if regressions else EXIT_OK
        status = "failed" if failures else "regression" if regressions else "ok"
        meta = {
            "report": name, "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "seconds": time.perf_counter() - t0, "status": status, "exit_code": code,
            "code_version": current, "host": socket.gethostname(), "store": store.uri,
            "tolerance": tolerance, "rerun_stale": rerun_stale, "quick": scale == "quick", "scale": scale,
            "command": " ".join(sys.argv),
        }
        blocks = build_report(meta, nights, store, name)
        title = f"sweeper nightly {meta['started']}"
        write_text(store, report_path(store, name, "report.md"), to_markdown(blocks))
        write_text(store, report_path(store, name, "report.html"), to_html(blocks, title))
        write_text(store, report_path(store, name, SUMMARY),
                   as_json({**meta, "studies": [n.to_json() for n in nights]}))
        if snapshots:  # written last: a report without a snapshot is never compared against
            store.write_bytes(report_path(store, name, SNAPSHOT),
                              snapshot_bytes(pd.concat(snapshots, ignore_index=True)))
        pruned = prune(store, keep_reports, protect=name)
        if pruned:
            say(f"pruned {len(pruned)} old reports (keeping {keep_reports})")
        say(f"== nightly {status.upper()} (exit {code}) in {fmt_seconds(time.perf_counter() - t0)}: "
            f"{report_path(store, name, 'report.md')}")
        return NightResult(code, report_path(store, name), nights)


def load_studies(paths: list[str], scale: str, overrides: list[str] | None = None, name: str | None = None) -> list:
    from sweeper.study import load_study

    if not paths:
        raise SweeperError("name at least one study file", "nightly")
    if name is not None and len(paths) > 1:
        raise SweeperError(f"renames one study, and {len(paths)} study files are given", "--name")
    studies = [load_study(p, scale=scale, overrides=overrides, name=name) for p in paths]
    seen: dict[str, str] = {}
    for path, study in zip(paths, studies):
        if study.name == REPORTS:
            raise SweeperError(f"the study name {REPORTS!r} is reserved for the nightly reports", path)
        if getattr(study, "search", None) is not None:
            raise SweeperError("nightly runs grid studies; an Optuna search is not incremental "
                               "(run it with `sweeper run`)", path)
        if study.name in seen:
            raise SweeperError(f"study name {study.name!r} is also {seen[study.name]}'s", path)
        seen[study.name] = path
    return studies
