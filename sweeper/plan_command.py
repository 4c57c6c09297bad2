"""The `sweeper plan` command: a study's trials and what running them would cost, without running
anything (with `--store`: which the store has done, and which `run` would copy from other studies)."""
from __future__ import annotations

import json
import sys

from sweeper.texttable import table


def add_parser(subparsers) -> None:
    from sweeper.cli import add_overrides, add_scale_option

    plan = subparsers.add_parser("plan", help="list a study's trials without running anything")
    plan.add_argument("study")
    plan.add_argument("--quick", action="store_true", help="the study's CPU-sized variant")
    add_scale_option(plan)
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--store", default=None, help="mark trials this store already has")
    plan.add_argument("--cpus-per-trial", type=float, default=None, help="as `run` would ask (default: the study's)")
    plan.add_argument("--gpus-per-trial", type=float, default=None, help="as `run` would ask (default: the study's)")
    plan.add_argument("--cluster", default=None, metavar="FILE",
                      help="Ray cluster file whose GPU workers the estimate assumes (default: ./cluster.yaml if present)")
    plan.add_argument("--gpu", default=None, metavar="NAME", help="the card GPU trials are estimated on "
                      "(default: the cluster file's, else A10G): A10, A10G, H100, L4, T4, V100, A100")
    plan.add_argument("--workers", type=int, default=None, help="GPU workers (default: the cluster file's max_workers, else 1)")
    plan.add_argument("--time-steps", action="store_true",
                      help="CPU trials: time a few real training steps of each network here instead of the FLOP "
                           "model (seconds per network; narrow networks run far below the FLOP rate)")
    plan.add_argument("--efficiency", type=float, default=None,
                      help="share of a card's stated rate a training step reaches (default: 0.3, an assumption)")
    add_overrides(plan)
    plan.set_defaults(fn=cmd_plan)


def cmd_plan(args) -> int:
    from sweeper import overrides
    from sweeper.cli import scale_of
    from sweeper.plan import describe
    from sweeper.study import load_study

    study = load_study(args.study, scale=scale_of(args), overrides=args.overrides, name=args.name)
    changed = overrides.describe(args.overrides, args.name)
    specs = study.specs()
    done, donors = set(), {}
    if args.store:  # a folder or an s3:// / gs:// URI: a missing folder or prefix has no trials yet
        from sweeper import reuse
        from sweeper.store import Store

        store = Store(args.store)  # refuses a path that cannot be a store (a file, a symlink loop)
        store.check_reachable()  # an object store: one line within seconds when it cannot be read
        done = store.trial_status(study.name).done
        if study.search is None:  # what `run` would copy from other studies instead of training
            donors = reuse.find(store, study.name, [s for s in specs if s.trial_id not in done])
    axes: list[str] = []
    for grid in study.grids():
        for name, values in grid.items():
            keys = list(values[0]) if isinstance(values[0], dict) else [name]
            axes += [k for k in keys if k not in axes]

    def row(s) -> dict:
        return {"trial_id": s.trial_id, **({"model": s.model} if hasattr(s, "model") else {}), **s.to_row(),
                "done": s.trial_id in done, "reuse": donors[s.trial_id].origin if s.trial_id in donors else ""}

    cpus = float(args.cpus_per_trial if args.cpus_per_trial is not None else study.resources.get("cpu", 1))
    gpus = float(args.gpus_per_trial if args.gpus_per_trial is not None else study.resources.get("gpu", 0))
    remaining = [s for s in specs if s.trial_id not in done and s.trial_id not in donors]
    cost, notes = describe(remaining, cpus, gpus, gpu=args.gpu, cluster_file=args.cluster, workers=args.workers,
                           efficiency=args.efficiency, time_steps=args.time_steps, scale=scale_of(args))
    if args.json:
        # Written row by row: a 100,000-trial grid's document is tens of megabytes, and building it
        # whole (rows, then one string) took gigabytes.
        head = {"study": study.name, "experiment": study.experiment, "count": len(specs),
                "done": len(done & {s.trial_id for s in specs}), "reused": len(donors),
                "overrides": list(args.overrides)}
        out = sys.stdout
        out.write(json.dumps(head)[:-1] + ', "trials": [')
        for i, s in enumerate(specs):
            out.write(("," if i else "") + "\n " + json.dumps(row(s)))
        estimate = {k: v for k, v in cost.items() if k != "trial_seconds"}
        out.write('\n], "estimate": ' + json.dumps(estimate) + "}\n")
        return 0
    rows = [row(s) for s in specs]
    if any(a in axes for a in ("model", "family", "depth", "width")) and "model" in rows[0]:
        axes = ["model"] + [a for a in axes if a not in ("model", "family")]
    shown = ["trial_id"] + [a for a in axes if a in rows[0]]
    if "trainable" in shown and "random_k" not in shown and len({r.get("random_k") for r in rows}) > 1:
        shown.insert(shown.index("trainable") + 1, "random_k")  # an axis value random(k=N) sets it
    shown += ["done"] + (["reuse"] if donors else [])
    taken = f", {len(donors)} to take from other studies of the store" if donors else ""
    print(f"study {study.name}: {len(rows)} trials ({sum(r['done'] for r in rows)} already done{taken})")
    if changed:
        print(changed)
    print(table(rows, shown))
    for line in notes:
        print(line)
    if cost["unknown_trials"]:
        print(f"({cost['unknown_trials']} trials of experiment '{study.experiment}' have no cost model)")
    return 0
