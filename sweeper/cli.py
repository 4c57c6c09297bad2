"""The `sweeper` command line.

Exit status: 0 all well; 1 the sweep ran but some trials failed or are missing; 2 bad input or
environment (one line on stderr naming the file and field; `--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from sweeper.errors import SweeperError, missing_package
from sweeper.texttable import table

DEFAULT_STORE = os.environ.get("SWEEPER_STORE", "store")

# Modules that add a subcommand: each has add_parser(subparsers), setting `fn` to its handler.
COMMAND_MODULES: list[str] = ["sweeper.plan_command", "sweeper.nightly.cli", "sweeper.nightly.schedule",
                              "sweeper.bench.cli", "sweeper.orchestration.submit", "sweeper.slurm.cli", "sweeper.report.cli",
                              "sweeper.compact"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage)
        raise SweeperError(message, self.prog)


# -- run -----------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from sweeper.data import normalize_root
    from sweeper.preflight import check_environment, warn_slow_cpu_bf16
    from sweeper.store import Store
    from sweeper.study import load_study
    from sweeper.trackers import check_installed

    check_installed(args.log)  # a tracker's missing library: one line naming its extra, before any work
    study = load_study(args.study, scale=scale_of(args), overrides=args.overrides, name=args.name)
    store = Store(args.store)
    data_root = normalize_root(args.data_root)  # a path made absolute; an s3:// or gs:// URI as given
    # Before any work: the store takes writes, the data are there, the cluster answers. The store's
    # first file waits until the sweep starts (a sweep that waits for nodes in vain leaves none).
    check_environment([study], store, data_root, args.address, marker=False)
    warn_slow_cpu_bf16(study, args.gpus_per_trial, scale_of(args), args.address)

    from sweeper.orchestration.live import LiveView, choose
    from sweeper.orchestration.sweep import run_study

    view = LiveView(study.name) if choose(args.progress) == "live" else None
    summary = run_study(
        study,
        store,
        address=args.address,
        data_root=data_root,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_failures=args.max_failures,
        checkpoint_seconds=args.checkpoint_seconds,
        wait_for_resources=args.wait_for_resources,
        trackers=args.log,
        view=view,
        say=view.say if view else print,
        reuse=not args.no_reuse,
    )
    reused = f"{summary.reused} taken from other studies, " if summary.reused else ""
    print(
        f"{study.name}: {summary.done} ran and done, {len(summary.failed)} failed, {summary.missing} missing, "
        f"{reused}{summary.skipped} skipped (already done) in {summary.seconds:.1f} s; results in {store.url(study.name)}"
    )
    for tid, error in list(summary.failed.items())[:10]:
        print(f"  failed {tid}: {error.splitlines()[0] if error else ''}")
    from sweeper.compact import maybe_compact

    maybe_compact(store, study.name, say=print)  # a table of many small files: merged before figures read it
    if not args.no_figures:  # the run recorded the study's plan (orchestration.resources.begin) as it began
        from sweeper.analysis.cohort import Plan
        from sweeper.analysis.draw import draw_study

        # An object store's figures are drawn into a local folder (named below) and copied to it.
        drawn = draw_study(store, study.name, names=study.figures or None, plan=Plan.of(study))
        for key, files in drawn.written.items():
            print(f"  figure {key}: {files[0]}")
        _say_where(drawn)
        _say_left_out(drawn, "  figures of ")
    return 0 if summary.ok else 1


def _say_where(drawn) -> None:
    """For figures of an object store: the local folder they were drawn into, and the copy's."""
    for study, url in sorted(drawn.copied.items()):
        print(f"  figures of {study} drawn locally in {drawn.folders[study]} and copied to {url}")


def _say_left_out(drawn, prefix: str = "") -> None:
    """The trials a study's figures did not use: those outside its current plan, one line a kind."""
    for study, lines in sorted(drawn.left_out.items()):
        for line in lines:
            print(f"{prefix}{study}: {line}")


# -- params --------------------------------------------------------------------------------------
def cmd_params(args) -> int:
    from sweeper.experiments.train.model import count
    from sweeper.experiments.train.spec import TrainSpec
    from sweeper.models import FAMILIES
    from sweeper.models.params import GROUPS

    out = {}
    for name in args.models:
        try:
            spec = TrainSpec.from_values({"model": name, "trainable": args.trainable, "dataset": args.dataset or "cifar10"})
        except SweeperError as e:
            raise e.at(name) from None
        # ImageNet models are counted with ImageNet's 1,000 classes unless a dataset is named.
        classes = FAMILIES[spec.family].classes if args.dataset is None else None
        out[name] = count(spec, num_classes=classes)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        rows = [{"model": k, **v} for k, v in out.items()]
        print(table(rows, ["model", *GROUPS, "trainable"]))
        print(f"(trainable under subset {args.trainable!r})")
    return 0


# -- figures -------------------------------------------------------------------------------------
def cmd_figures(args) -> int:
    from sweeper.analysis.draw import draw_store
    from sweeper.store import Store

    store = Store(args.store)
    store.check_reachable()  # an object store: one line within seconds when it cannot be read
    if not store.studies():
        raise SweeperError("no study results here", args.store)
    from sweeper.studyfiles import plans_of

    plans = plans_of(args, scale_of(args))
    # study files name the studies to draw (their current plans only), unless --study names others
    studies = args.study or list(plans) or None
    drawn = draw_store(store, Path(args.out) if args.out else None, studies, plans=plans)
    for key, files in sorted(drawn.written.items()):
        print(f"drew    {key}: {', '.join(str(f) for f in files)}")
    for key, why in sorted(drawn.skipped.items()):
        print(f"skipped {key}: {why}")
    _say_where(drawn)
    _say_left_out(drawn, "figures of ")
    return 0


# -- status --------------------------------------------------------------------------------------
def cmd_status(args) -> int:
    from sweeper.store import Store

    store = Store(args.store)
    store.check_reachable()
    from sweeper.analysis.cohort import plan_counts, recorded_plan
    from sweeper.studyfiles import plans_of

    planned = plans_of(args, scale_of(args))
    rows, files, left_out = [], [], []
    for name in sorted(set(store.studies()) | set(planned)):
        st = store.trial_status(name)
        # counted over the study's current plan (its study file's, else its last run's): trials
        # of an earlier recipe are `other`, and said what they are
        plan = planned.get(name) or recorded_plan(store, name)
        cols = ["ended_at", "trial_id", "reused_from", *(plan.values if plan else ())]
        trials = store.read(name, "trials", columns=cols) if st.done or st.failed else None
        counts = {"done": len(st.done), "failed": len(st.failed), "missing": None, "other": 0, "left_out": []}
        if plan is not None:
            counts = plan_counts(trials, st.done, st.failed, plan)
            left_out += [f"{name}: {line}" for line in counts["left_out"]]
        damaged = sorted(p for paths in st.damaged.values() for p in paths)
        counted = st.done & plan.ids if plan is not None else st.done
        copied = 0 if trials is None or "reused_from" not in trials else \
            int(trials.loc[trials["trial_id"].isin(counted), "reused_from"].notna().sum())
        rows.append({
            "study": name,
            **counts,
            "copied": copied,  # of the done: copied from another study (sweeper.reuse), not trained here
            "plan": None if plan is None else ("study file" if name in planned else "last run"),
            "corrupt": len(st.corrupt),
            "damaged": len(st.damaged),
            "stray": len(st.stray),
            "duplicate": len(st.duplicate),
            "last_run": None if trials is None or trials.empty else str(trials["ended_at"].max()),
            # the files behind the counts, by path: what to look at (readers skip or dedupe them)
            "corrupt_files": st.corrupt, "damaged_files": damaged, "stray_files": st.stray,
            "duplicate_files": st.duplicate,
        })
        files += [(name, kind, p) for kind, paths in (("corrupt", st.corrupt), ("damaged", damaged),
                                                       ("stray", st.stray), ("duplicate", st.duplicate))
                  for p in paths]
    from sweeper.searchstorage import existing

    searches = {row["study"]: existing(store, row["study"]) for row in rows}
    for row in rows:
        row["optuna"] = searches[row["study"]].url if searches[row["study"]] else None
    if args.json:
        print(json.dumps({"store": store.uri, "studies": rows}, indent=1))
        return 0
    if not rows:
        print("empty store")
        return 0
    # columns in their pinned order (scripts read them); ones added later go at the end
    print(table(rows, ["study", "done", "failed", "missing", "other", "corrupt", "damaged", "stray", "duplicate",
                        "last_run", "copied"]))
    for line in left_out:
        print(line)
    why = {"corrupt": "unreadable or mistyped; its trial runs again",
           "damaged": "a done trial's table, missing or unreadable; the trial runs again",
           "stray": "holds no row of the trial it is named for (a copy?); readers ignore it",
           "duplicate": "holds its trial's row more than once; readers take the first"}
    for name, kind, path in files:
        print(f"{name}: {kind} {path} ({why[kind]})")
    for row in rows:  # where each study's Optuna searches are, and how to look at them
        if row["optuna"] is not None:
            print(f"{row['study']}: {searches[row['study']].describe()}")
    return 0


def seconds(text: str) -> float:
    """A non-negative number of seconds (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def add_wait_option(p) -> None:
    """`--wait-for-resources`, shared by run, nightly, schedule and submit."""
    p.add_argument("--wait-for-resources", type=seconds, default=None, metavar="SECONDS",
                   help="how long to wait for a node that can hold one trial, on a cluster that starts "
                        "without workers (cluster.yaml's) and adds them as trials ask; then give up, "
                        "having run and written nothing (exit 2). Default: 900 on a cluster joined "
                        "with --address, 0 on the local one, which never grows")


def add_reuse_option(p) -> None:
    p.add_argument("--no-reuse", action="store_true",
                   help="train every missing trial here, even one another study of the store has done with the "
                        "same training (default: copy that study's results; the row's reused_from says whence)")


def add_overrides(p) -> None:
    """`--set KEY=VALUE` (repeatable) and `--name NAME`: see sweeper.overrides."""
    from sweeper.overrides import add_options

    add_options(p)


def add_study_file_options(p) -> None:
    """figures, status: the flags that made the run's study of its file (sweeper.studyfiles)."""
    p.add_argument("--quick", action="store_true", help="the study files' quick variants")
    add_scale_option(p)
    add_overrides(p)


def add_scale_option(p) -> None:
    """`--scale`, beside each command's `--quick` (kept as it was: the same as `--scale quick`)."""
    from sweeper.study import SCALES

    p.add_argument("--scale", choices=SCALES, default=None,
                   help="the study's size: quick (a smoke run, minutes), cpu (a laptop's hours, big enough to "
                        "show the papers' effects), full (as declared, the default); --quick is --scale quick")


def scale_of(args) -> str:
    """The scale a command's --scale and --quick ask for; both, disagreeing, is bad input."""
    scale = getattr(args, "scale", None)
    if getattr(args, "quick", False):
        if scale not in (None, "quick"):
            raise SweeperError(f"--quick is --scale quick; it cannot go with --scale {scale}", "--scale")
        return "quick"
    return scale or "full"


def scale_arguments(scale: str) -> list[str]:
    """The options that ask a passed-on command for `scale` (`--quick` as before for quick)."""
    return {"quick": ["--quick"], "full": []}.get(scale, ["--scale", scale])


def tracker(text: str):
    """A `--log` value, KIND or KIND=TARGET (an argparse type)."""
    from sweeper.trackers import parse_tracker

    try:
        return parse_tracker(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_log_option(p) -> None:
    """`--log`, shared by run, nightly and submit (`schedule` has its own `--log`: its log file)."""
    p.add_argument("--log", action="append", type=tracker, default=[], metavar="TRACKER[=WHERE]",
                   help="report every trial (its spec as parameters, each epoch's metrics) to a tracker, "
                        "through Ray Tune's callbacks; repeatable: tensorboard[=DIR] (default "
                        "<store>/<study>/tensorboard), mlflow[=URI] (default sqlite in <store>/<study>/mlruns), "
                        "wandb[=PROJECT] (default: the study's name; offline unless logged in). For an "
                        "s3:// or gs:// store the default folders are under ./trackers/")


def build_parser() -> Parser:
    p = Parser(prog="sweeper", description="Sweeps of BatchNorm-only training on Ray Tune.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run a study's missing trials on Ray")
    run.add_argument("study")
    run.add_argument("--store", default=DEFAULT_STORE, help="results store: a path or s3://, gs:// URI (default: %(default)s)")
    run.add_argument("--address", default=None, help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local one "
                          "with all of this machine's CPUs, or $SWEEPER_LOCAL_CPUS of them)")
    run.add_argument("--data-root", default=None, help="dataset root (or $SWEEPER_DATA_ROOT)")
    run.add_argument("--quick", action="store_true", help="the study's CPU-sized variant")
    add_scale_option(run)
    run.add_argument("--cpus-per-trial", type=float, default=None)
    run.add_argument("--gpus-per-trial", type=float, default=None, help="fractions share a GPU (e.g. 0.25)")
    run.add_argument("--max-failures", type=int, default=2, help="retries of a trial lost to a node fault")
    run.add_argument("--checkpoint-seconds", type=float, default=30.0, help="checkpoint at most this often")
    run.add_argument("--no-figures", action="store_true", help="do not redraw figures at the end")
    add_reuse_option(run)
    add_wait_option(run)
    add_overrides(run)
    add_log_option(run)
    run.add_argument("--progress", choices=["auto", "live", "lines"], default="auto",
                     help="live: a view of the running trials redrawn in place; lines: one line per finished "
                          "trial (for logs); auto: live on a terminal, else lines (default)")
    run.set_defaults(fn=cmd_run)

    params = sub.add_parser("params", help="parameter counts by group (Table 1)")
    params.add_argument("models", nargs="+", help="e.g. resnet-110 wrn-14-8 imagenet-resnet-50")
    params.add_argument("--trainable", default="bn")
    params.add_argument("--dataset", default=None, help="sets input channels and classes (default: cifar10; 1,000 classes for imagenet-resnet)")
    params.add_argument("--json", action="store_true")
    params.set_defaults(fn=cmd_params)

    figures = sub.add_parser("figures", help="redraw every figure a store has data for")
    figures.add_argument("store")
    figures.add_argument("studies", nargs="*", help="study files: draw these studies from the trials of their "
                         "current plans (default: each study's last run's plan, when one is recorded)")
    figures.add_argument("--out", default=None, help="folder (default: <store>/<study>/figures; for an "
                         "s3:// or gs:// store ./figures/<bucket>/<prefix>/<study>, copied to the store)")
    figures.add_argument("--study", action="append", help="only this study (repeatable)")
    add_study_file_options(figures)
    figures.set_defaults(fn=cmd_figures)

    status = sub.add_parser("status", help="per study: trials done, failed, missing; the last run")
    status.add_argument("store")
    status.add_argument("studies", nargs="*", help="study files: count their current plans' trials (done, "
                        "failed, missing) and say what else the store holds")
    status.add_argument("--json", action="store_true")
    add_study_file_options(status)
    status.set_defaults(fn=cmd_status)

    for module in COMMAND_MODULES:  # commands that live in their own modules
        importlib.import_module(module).add_parser(sub)
    from sweeper.checks import apply_option_ranges

    apply_option_ranges(p)  # every numeric option of every command: finite, and in its range
    return p


def _one_line(text: str) -> str:
    """A message as one line: an error quoting a file's or library's text may hold newlines."""
    return " ".join(str(text).split())


def _stdout_closed() -> int:
    """The reader of our output went away (`sweeper status --json | head`): stop quietly, as a
    command killed by SIGPIPE does, and keep Python from complaining when it flushes at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a command that died writing to a closed pipe


def main(argv: list[str] | None = None) -> int:
    from sweeper import interrupt
    from sweeper.checks import check_argv

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    interrupt.terminated = False
    previous = interrupt.on_sigterm_interrupt()
    try:
        check_argv(argv)  # no control characters in any path or name (crontab lines, reports)
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except SweeperError as e:
        if debug:
            raise
        print(f"sweeper: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        how, code = ("terminated (SIGTERM)", 143) if interrupt.terminated else ("interrupted", 130)
        print(f"sweeper: {how}; finished trials are in the store, run again to resume", file=sys.stderr)
        return code
    except Exception as e:  # a bug of ours: still one line, the traceback behind --debug
        if debug:
            raise
        if missing := missing_package(e):  # not a bug of ours but an incomplete install (a hand-built image)
            print(f"sweeper: error: the Python package {missing!r} is missing ({_one_line(e)[:300]}); install "
                  "sweeper with its dependencies (pip install -e . in a checkout)", file=sys.stderr)
            return 3
        print(f"sweeper: internal error: {type(e).__name__}: {_one_line(e)[:500]} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 3
    finally:
        interrupt.restore_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
