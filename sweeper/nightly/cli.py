"""The `sweeper nightly` command: its options (which `sweeper schedule` shares and passes on) and
its handler, which turns the night's result into the exit status (see `sweeper.nightly`)."""
from __future__ import annotations

import sys

from sweeper import interrupt
from sweeper.nightly.lock import LockHeld
from sweeper.nightly.run import EXIT_LOCKED, run_nightly


def add_nightly_options(p, studies_required: bool = True) -> None:
    """The options `nightly` takes, shared with `schedule` (which passes them on)."""
    p.add_argument("studies", nargs="+" if studies_required else "*", metavar="STUDY",
                   help="study files, run one after another")
    p.add_argument("--store", required=True, help="results store: a path or s3://, gs:// URI")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local one)")
    p.add_argument("--data-root", default=None, help="dataset root (or $SWEEPER_DATA_ROOT)")
    p.add_argument("--quick", action="store_true", help="the studies' CPU-sized variants")
    from sweeper.cli import add_scale_option

    add_scale_option(p)
    p.add_argument("--rerun-stale", action="store_true",
                   help="rerun done trials whose code_version differs from the running code (default: keep them)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="flag a configuration whose mean test_acc fell by more than this (default: %(default)s)")
    p.add_argument("--keep-reports", type=int, default=30, help="reports to keep; older ones are deleted; 0 keeps all (default: %(default)s)")
    from sweeper.cli import add_wait_option

    add_wait_option(p)  # a study that gets no node in time is reported as not run; the night goes on
    from sweeper.overrides import add_options

    add_options(p)  # applied to every study; a key one of them does not know names that file


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "nightly", help="run studies incrementally under a lock and write a dated report",
        description="Run what the store lacks for each study (missing, failed, and with --rerun-stale stale "
                    "trials), redraw figures, and write a report under <store>/reports/. Exit status: 0 all "
                    "well; 1 failures; 2 bad input; 3 another nightly holds the lock; 4 a regression.",
    )
    add_nightly_options(p)
    from sweeper.cli import add_log_option

    add_log_option(p)  # not in the shared options: `schedule` has a --log of its own (its log file)
    p.set_defaults(fn=cmd_nightly)


def cmd_nightly(args) -> int:
    from sweeper.cli import scale_of
    from sweeper.data import normalize_root
    from sweeper.trackers import check_installed

    check_installed(args.log)
    data_root = normalize_root(args.data_root)  # a path made absolute; an s3:// or gs:// URI as given
    # cron or systemd stopping us unwinds (the lock is released), once, however often it signals
    previous = interrupt.on_sigterm_interrupt()
    try:
        result = run_nightly(
            args.studies, args.store, address=args.address, data_root=data_root, scale=scale_of(args),
            rerun_stale=args.rerun_stale, tolerance=args.tolerance, keep_reports=args.keep_reports,
            say=lambda line: print(line, flush=True), wait_for_resources=args.wait_for_resources,
            overrides=args.overrides, name=args.name,
            trackers=args.log,
        )
    except LockHeld as e:
        print(f"sweeper: {e}", file=sys.stderr, flush=True)
        return EXIT_LOCKED
    finally:
        interrupt.restore_sigterm(previous)
    return result.exit_code
