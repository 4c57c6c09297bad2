"""The `sweeper report` command: one study's page (plan, status, per-axis tables, results, figures,
failed trials) from a store, as self-contained HTML or as Markdown with its figures beside it.

    sweeper report STUDY_FILE|STUDY --store S --out report.html   (or report.md)

Everything is checked before anything is drawn or written (bad input: one line, exit 2, no file);
the figures are drawn into a temporary folder, locally, whatever the store (an s3:// store too), and
nothing is written into the store."""
from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from sweeper.errors import SweeperError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="one study's report: plan, status, per-axis tables, figures, failures",
                       description="Write a self-contained report on one study: HTML (figures embedded) or "
                                   "Markdown (figures in <name>_files/ beside it), by --out's suffix.")
    p.add_argument("study", metavar="STUDY_FILE|STUDY", help="a study file (its plan, and pending trials), or the "
                   "name of a study in the store")
    p.add_argument("--store", default=None, help="results store: a path or s3://, gs:// URI (default: $SWEEPER_STORE "
                   "or ./store)")
    p.add_argument("--out", required=True, help="the page to write: *.html or *.md")
    p.add_argument("--quick", action="store_true", help="the study file's CPU-sized variant")
    p.add_argument("--no-figures", action="store_true", help="leave the figures out (drawing is the slow part)")
    p.set_defaults(fn=cmd_report)


def _study(arg: str, store, quick: bool):
    """(study or None, its file or None, its name): a file when the argument names one, else a name
    the store must have."""
    from sweeper.study import load_study

    path = Path(arg)
    if path.is_file():
        study = load_study(path, quick=quick)
        return study, str(path), study.name
    if path.suffix == ".py" or "/" in arg:
        raise SweeperError("no such study file", arg)
    names = store.studies()
    if arg not in names:
        have = f"studies there: {', '.join(names)}" if names else "it holds no study yet"
        raise SweeperError(f"unknown study {arg!r} in store {store.url()}; {have} (or name a study file)", arg)
    if quick:
        raise SweeperError("--quick picks a study file's variant; name the file, or the study `NAME-quick`", "--quick")
    return None, None, arg


def _figure_names(experiment: str, wanted: list[str] | None) -> list[str]:
    """Every figure of the experiment kind's figure modules (the study's own list first)."""
    import importlib

    from sweeper.experiments import EXPERIMENTS

    names = list(wanted or [])
    if experiment in EXPERIMENTS:
        for module in EXPERIMENTS[experiment].figure_modules:
            names += [n for n in importlib.import_module(module).FIGURES if n not in names]
    return names


def draw(store, study: str, names: list[str]) -> tuple[dict[str, bytes], list[str]]:
    """Draw `names` of the study into a temporary folder (never into the store); the PNGs, and a
    note per figure not drawn. All in one pass (each table read once); should one figure fail,
    again one by one, so that the others still make the page and the failure is named."""
    from sweeper.analysis.draw import draw_study

    def pngs(drawn, name: str) -> list[Path]:
        return [f for f in drawn.written.get(f"{study}/{name}", []) if f.suffix == ".png"]

    figures: dict[str, bytes] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sweeper-report-") as tmp:
        try:
            batches = [(names, draw_study(store, study, out=Path(tmp), names=names))]
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 - found again below, figure by figure
            batches = []
            for name in names:
                try:
                    batches.append(([name], draw_study(store, study, out=Path(tmp), names=[name])))
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - one figure that cannot be drawn is noted
                    why = str(e).splitlines()[0] if str(e) else ""
                    notes.append(f"{name}: could not be drawn ({type(e).__name__}: {why})")
        for batch, drawn in batches:
            for name in batch:
                files = pngs(drawn, name)
                if files:
                    figures[name] = files[0].read_bytes()
                else:
                    notes.append(f"{name}: no data for it in this study")
    return figures, notes


def cmd_report(args) -> int:
    import os

    from sweeper.report.page import output_format, page_blocks, plan_blocks, write_page
    from sweeper.report.study import of_store, of_study
    from sweeper.store import Store

    out = Path(args.out)
    fmt = output_format(out)
    store_arg = args.store or os.environ.get("SWEEPER_STORE", "store")
    store = Store(store_arg)
    store.check_reachable()  # an object store: one line within seconds when it cannot be read
    if store.local and not Path(store.root).is_dir():
        raise SweeperError(f"no such store {store.root}", "--store")
    study, path, name = _study(args.study, store, args.quick)
    overview = of_study(study, store) if study is not None else of_store(store, name)
    lines: list[str] = []
    if study is not None:
        from sweeper.plan import describe

        pending = {t for t, s in zip(overview.trials["trial_id"], overview.trials["status"]) if s != "done"}
        remaining = [s for s in study.specs() if s.trial_id in pending]
        try:
            _, lines = describe(remaining, float(study.resources.get("cpu", 1)), float(study.resources.get("gpu", 0)))
        except SweeperError as e:  # an estimate that cannot be made is stated, not fatal to the report
            lines = [f"no estimate of the remaining trials' cost: {e}"]
    figures, notes = ({}, ["left out (--no-figures)"]) if args.no_figures else draw(
        store, name, _figure_names(overview.experiment, study.figures if study is not None else None))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    blocks = page_blocks(overview, plan_blocks(study, path, lines), figures, notes, out, fmt, store.url(), when)
    write_page(blocks, out, fmt, f"sweeper report: {name}", figures)
    counts = ", ".join(f"{overview.count(s)} {s}" for s in ("done", "failed", "pending") if overview.count(s))
    print(f"wrote {out} ({name}: {len(overview.trials)} trials{': ' + counts if counts else ''}; "
          f"{len(figures)} figure{'s' * (len(figures) != 1)})")
    return 0
