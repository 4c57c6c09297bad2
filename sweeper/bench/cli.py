"""`sweeper bench`: the command line of the measurements (run.py runs them)."""
from __future__ import annotations

import json
import sys

from sweeper.bench.run import format_table, run_bench


PARTS = ("step", "data", "ray", "figures", "store")


def cmd_bench(args) -> int:
    parts = set(args.only.split(",")) if args.only else None
    if parts and parts - set(PARTS):
        from sweeper.errors import SweeperError

        raise SweeperError(f"unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; valid: {', '.join(PARTS)}",
                           "--only")
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.json else (lambda s: None)
    results = run_bench(quick=args.quick, data_root=args.data_root, threads=args.threads, say=say, only=parts,
                        trials=args.trials)
    if args.json:
        print(json.dumps(results, indent=1, default=str))
    else:
        print(format_table(results))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure sweep performance against issue 9's goals")
    p.add_argument("--quick", action="store_true", help="a few minutes on a 2-core laptop")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--data-root", default=None, help="CIFAR-10 root (default: $SWEEPER_DATA_ROOT or ../shared/data/cifar10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the step measurements (one trial's CPUs)")
    p.add_argument("--only", default=None, help="comma-separated subset of: step, data, ray, figures, store "
                   "(store runs only when named: a generated store before and after compaction, local and S3)")
    p.add_argument("--trials", type=int, default=10_000, help="trials of the generated store (--only store)")
    p.set_defaults(fn=cmd_bench)
