"""A short sweep's cost, as `sweeper run` without --address runs it: a fresh driver process starting
the embedded Ray cluster and running a study of four 1-epoch `digits` trials, in three ways side by
side:

    before      Ray Tune's usage count of the callbacks imports mlflow and wandb (installed here, as with
                `pip install -e '.[test]'`); the embedded cluster offers all of the machine's CPUs
    census_off  the count skipped (sweeper.orchestration.trackers.skip_tunes_callback_census), all CPUs
    one_cpu     the count skipped, SWEEPER_LOCAL_CPUS=1: the trials one after another in one reused
                trial process (Tune's reuse_actors) instead of one process per CPU

    .venv/bin/python benchmarks/sweep_startup.py [--repeats 5] [--trials 4]

Each repeat runs the three once each, in a rotating order, each into a fresh store. It reports the
medians of wall-clock seconds and of CPU seconds (the whole machine's busy time from /proc/stat,
which counts Ray's daemons and trial processes that a child's rusage misses, so run it on an
otherwise idle machine), their ratios to `before`, and checks that all ways stored the same test
accuracies. One JSON object.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

STUDY = """
from sweeper import Study
study = Study(name="startup", dataset="digits", axes={{"seed": list(range({trials}))}},
              recipe={{"model": "resnet-8-4", "epochs": 1, "batch_size": 128, "augment": "none"}})
"""
# `before`: the driver with the census skip undone (tracker_callbacks looks the function up by name)
DRIVER = ("import sys, sweeper.orchestration.trackers as t\n"
          "if sys.argv.pop(1) == 'before': t.skip_tunes_callback_census = lambda: None\n"
          "from sweeper.cli import main\nraise SystemExit(main(sys.argv[1:]))\n")
WAYS = ("before", "census_off", "one_cpu")


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all states but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def one(way: str, study: Path) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("SWEEPER_LOCAL_CPUS", None)
    if way == "one_cpu":
        env["SWEEPER_LOCAL_CPUS"] = "1"
    store = tempfile.mkdtemp(prefix="sweep-startup-")
    t0, c0 = time.perf_counter(), busy_seconds()
    subprocess.run([sys.executable, "-c", DRIVER, "before" if way == "before" else "after", "run", str(study),
                    "--store", store, "--no-figures", "--progress", "lines"],
                   env=env, check=True, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, busy_seconds() - c0
    acc = pd.read_parquet(Path(store) / "startup" / "trials").set_index("trial_id")["test_acc"].sort_index()
    return {"wall_s": wall, "cpu_s": cpu, "test_acc": acc.round(6).tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--trials", type=int, default=4)
    args = p.parse_args()
    study = Path(tempfile.mkdtemp(prefix="sweep-startup-")) / "startup.py"
    study.write_text(STUDY.format(trials=args.trials))
    runs: dict[str, list[dict]] = {w: [] for w in WAYS}
    for i in range(args.repeats):
        for way in WAYS[i % 3:] + WAYS[:i % 3]:
            runs[way].append(one(way, study))
    med = {w: {k: round(statistics.median(r[k] for r in rs), 2) for k in ("wall_s", "cpu_s")} for w, rs in runs.items()}
    print(json.dumps({
        "repeats": args.repeats, "trials": args.trials, "cores": os.cpu_count(),
        "median": med,
        "ratio_to_before": {w: {k: round(med["before"][k] / med[w][k], 2) for k in ("wall_s", "cpu_s")} for w in WAYS},
        "same_test_acc": len({json.dumps(r["test_acc"]) for rs in runs.values() for r in rs}) == 1,
    }, indent=1))


if __name__ == "__main__":
    main()
