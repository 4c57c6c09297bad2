"""Run `sweeper bench` under the machine's heavy-run lock and keep the JSON beside the table.

    .venv/bin/python benchmarks/run_bench.py --quick              # table to stdout
    .venv/bin/python benchmarks/run_bench.py --out results.json   # full run, JSON kept
    .venv/bin/python benchmarks/run_bench.py --only step,data     # some measurements only

The measurements live in sweeper/bench/ (one module per measurement: step.measure_step,
flops.measure_sgemm, data_share.measure_data_fraction, sweeps.measure_trial_overhead and
measure_sweep_efficiency, figures.generate_store + measure_figures; run.run_bench runs them all);
this script only takes the lock (`flock /tmp/sweeper-heavy.lock`, as the other
heavy runs on a shared machine do) and records the load average with the results.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeper.bench.run import format_table, run_bench  # noqa: E402

LOCK = "/tmp/sweeper-heavy.lock"


@contextlib.contextmanager
def heavy_lock(path: str = LOCK):
    with open(path, "a") as f:
        t0 = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        if waited > 1:
            print(f"(waited {waited:.0f} s for {path})", file=sys.stderr)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated: step, data, ray, figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--no-lock", action="store_true")
    args = p.parse_args()
    with contextlib.nullcontext() if args.no_lock else heavy_lock():
        results = run_bench(quick=args.quick, data_root=args.data_root, threads=args.threads,
                                  only=set(args.only.split(",")) if args.only else None,
                                  say=lambda s: print(s, file=sys.stderr, flush=True))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
