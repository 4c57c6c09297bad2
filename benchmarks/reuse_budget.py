"""Trial time of the three laptop-scale studies with and without the trials they share (sweeper.reuse).

Run in the order sparsity -> depth_vs_width -> norm_types into one store, a study's trial is copied
when a study before it has the same training done with at least as much recorded. Each trial's
seconds come from `sweeper plan --time-steps` (sweeper.plan.estimate with time_steps=True: real
training steps of each network timed on this CPU); which trials are copied, from the specs' own
`sweeper.reuse.serves`, the test `sweeper.reuse.find` applies to a store's done trials.

    .venv/bin/python benchmarks/reuse_budget.py --precision fp32     # about 2 minutes on 2 cores
"""
from __future__ import annotations

import argparse

from sweeper.plan import estimate
from sweeper.reuse import serves
from sweeper.study import load_study

ORDER = ["sparsity", "depth_vs_width", "norm_types"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default=None, help="override the cpu recipes' precision (fp32 on a CPU "
                                                      "without AVX-512, where bf16 is 10x slower)")
    args = p.parse_args()
    overrides = [f"cpu.recipe.precision={args.precision}"] if args.precision else []
    before: list = []  # the specs of the studies run earlier
    alone = shared = 0.0
    for name in ORDER:
        specs = load_study(f"studies/{name}.py", scale="cpu", overrides=overrides).specs()
        seconds = estimate(specs, 1.0, time_steps=True)["trial_seconds"]
        copied = [any(serves(d, s) for d in before) for s in specs]
        own = sum(t for t, c in zip(seconds, copied) if not c)
        print(f"{name}: {len(specs)} trials, {sum(seconds) / 3600:.2f} trial-hours alone; {sum(copied)} copied "
              f"from the studies before it: {own / 3600:.2f} trial-hours")
        alone, shared = alone + sum(seconds), shared + own
        before += specs
    print(f"the three: {alone / 3600:.2f} -> {shared / 3600:.2f} trial-hours ({alone / shared:.2f}x); "
          f"two at a time on 2 cores {alone / 7200:.2f} -> {shared / 7200:.2f} hours")


if __name__ == "__main__":
    main()
