"""A digits trial's first seconds in a fresh process, as every Tune trial process starts: the digits
read through scikit-learn's `load_digits` (importing scikit-learn) against read straight from the CSV
scikit-learn ships (`sweeper.data.digits.read_digits`), side by side.

    .venv/bin/python benchmarks/digits_startup.py [--repeats 7]

Each repeat starts two fresh Python processes one after the other, in alternating order: each imports
the trial code, then times (1) loading the digits and (2) the whole first trial after it (`run_trial`
of the quickstart's BN-only ResNet-8-8, 1 epoch, 1 thread; its own load of the digits then hits the
module cache of scikit-learn, if imported); (1) + (2) is what a trial process pays. It reports the
medians and their ratios, and
checks that both ways give the same images, labels and test accuracy. One JSON object.
"""
import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import torch
from sweeper.data import digits
from sweeper.experiments.train.loop import run_trial
from sweeper.experiments.train.spec import TrainSpec

torch.set_num_threads(1)
if sys.argv[1] == "scikit-learn":
    digits.digits_file = lambda: None  # read_digits then asks load_digits, as before
t0 = time.perf_counter()
images, labels = digits.read_digits()
load = time.perf_counter() - t0
spec = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-8", "epochs": 1, "augment": "none",
                              "trainable": "bn"})
t0 = time.perf_counter()
result = run_trial(spec, device="cpu", threads=1)
trial = time.perf_counter() - t0
print(json.dumps({"load_s": load, "first_trial_s": trial, "test_acc": result.row["test_acc"],
                  "checksum": float(images.sum()) + float((labels * 7).sum()),
                  "sklearn_imported": "sklearn" in sys.modules}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    runs: dict[str, list[dict]] = {"scikit-learn": [], "csv": []}
    for i in range(args.repeats):
        for way in (("scikit-learn", "csv") if i % 2 == 0 else ("csv", "scikit-learn")):
            out = subprocess.run([sys.executable, "-c", CHILD, way], capture_output=True, text=True, check=True)
            runs[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for rs in runs.values():
        for r in rs:
            r["load_and_first_trial_s"] = r["load_s"] + r["first_trial_s"]
    keys = ("load_s", "first_trial_s", "load_and_first_trial_s")
    med = {way: {k: round(statistics.median(r[k] for r in rs), 3) for k in keys} for way, rs in runs.items()}
    same = len({(r["checksum"], r["test_acc"]) for rs in runs.values() for r in rs}) == 1
    print(json.dumps({
        "repeats": args.repeats,
        "median_seconds": med,
        "load_ratio_sklearn_over_csv": round(med["scikit-learn"]["load_s"] / med["csv"]["load_s"], 1),
        "load_and_first_trial_ratio_sklearn_over_csv": round(
            med["scikit-learn"]["load_and_first_trial_s"] / med["csv"]["load_and_first_trial_s"], 2),
        "seconds_saved_per_trial_process": round(
            med["scikit-learn"]["load_and_first_trial_s"] - med["csv"]["load_and_first_trial_s"], 2),
        "same_data_and_accuracy": same,
        "csv_imports_sklearn": any(r["sklearn_imported"] for r in runs["csv"]),
    }, indent=1))


if __name__ == "__main__":
    main()
