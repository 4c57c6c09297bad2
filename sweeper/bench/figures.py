"""Figure redraw at scale: a generated store of 1,000 finished trials with their 8.2 million `bn`
rows, written through the real store, then `sweeper figures` and a bare read of the `bn` table,
each in a fresh interpreter (its wall time as a user sees it, and its peak memory)."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any


def generate_store(root: str | os.PathLike, trials: int = 1000, model: str = "resnet-218", seed: int = 0,
                   study: str = "bench-figures", workers: int = 4) -> dict[str, Any]:
    """A store of `trials` finished training trials with their `bn` tables, written through
    Store.commit_trial (the real layout), with numpy-generated values. The default model,
    ResNet-218, has 8,176 BN channels: 1,000 trials give 8.2 million `bn` rows."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pandas as pd

    from sweeper.experiments.train.model import build_model
    from sweeper.models.params import count_groups
    from sweeper.models.roles import norm_layers, position
    from sweeper.store import Store
    from sweeper.experiments.train.spec import TrainSpec
    from sweeper.trial import now

    store = Store(root)
    store.ensure_writable()
    subsets_ = ["bn", "all", "bn+output", "output", "random"]
    base = TrainSpec.from_values({"model": model})
    meta = build_model(base, device="meta")
    groups = count_groups(meta)
    layers = []
    for index, (name, module) in enumerate(norm_layers(meta)):
        stage, block, role = position(meta, name)
        layers.append((name, index, stage, block, role, module.weight.shape[0]))
    sizes = np.array([c for *_, c in layers])
    layer_col = np.repeat(np.array([n for n, *_ in layers], dtype=object), sizes)
    static = pd.DataFrame({
        "layer": layer_col,
        "layer_index": np.repeat([i for _, i, *_ in layers], sizes),
        "stage": np.repeat([s for _, _, s, *_ in layers], sizes),
        "block": np.repeat([b for *_, b, _r, _c in layers], sizes),
        "role": np.repeat(np.array([r for *_, r, _c in layers], dtype=object), sizes),
        "norm": "batch",
        "channel": np.concatenate([np.arange(c) for c in sizes]),
    })
    rows = len(static)

    def one(i: int) -> None:
        rng = np.random.default_rng(seed * 1_000_003 + i)
        subset = subsets_[i % len(subsets_)]
        spec = base.replace(trainable=subset, seed=i // len(subsets_))
        g0 = rng.random(rows)
        trained = subset in ("bn", "bn+output")
        bn = static.copy()
        bn["gamma"] = g0 + (rng.normal(0, 0.3, rows) if trained else 0.0)
        bn["beta"] = rng.normal(0, 0.2, rows) if trained else np.zeros(rows)
        bn["gamma_init"] = g0
        bn["beta_init"] = 0.0
        acc = float(np.clip(rng.normal({"all": 0.93, "bn": 0.82, "bn+output": 0.83, "output": 0.4,
                                        "random": 0.5}[subset], 0.01), 0, 1))
        row = {"trial_id": spec.trial_id, "study": study, "experiment": "train", "status": "done", "error": "",
               **spec.to_row(), "model": spec.model, "test_acc": acc, "test_top5": min(1.0, acc + 0.05),
               "test_loss": float(1 - acc), "train_acc": min(1.0, acc + 0.05), "train_loss": float(1 - acc),
               "total_params": groups["total"], "bn_params": groups["batchnorm"], "output_params": groups["output"],
               "shortcut_params": groups["shortcut"], "trainable_params": groups["batchnorm"],
               "train_seconds": 3600.0, "device": "cuda", "cpus": 1.0, "gpus": 1.0, "node_id": "",
               "hostname": "bench", "code_version": "bench", "started_at": now(), "ended_at": now()}
        store.commit_trial(study, spec, row, {"bn": bn})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # fsync and Parquet encoding release the GIL
        list(pool.map(one, range(trials)))
    return {"trials": trials, "model": model, "bn_rows": rows * trials, "study": study,
            "write_s": round(time.perf_counter() - t0, 2)}


def rerun_trial(store, tid: str, gamma, study: str = "bench-figures", **results) -> None:
    """Commit trial `tid` of a generated store again, its γ set to `gamma` (a number or one value
    per row) and its trials row updated with `results`: the store a rerun leaves, the trial's own
    file beside whatever part held it before."""
    import pandas as pd

    from sweeper.experiments.train.spec import TrainSpec

    bn = store.read(study, "bn")
    bn = bn[bn["trial_id"] == tid].drop(columns=["trial_id"]).assign(gamma=gamma)
    trials = store.read(study, "trials")
    row = trials[trials["trial_id"] == tid].iloc[0].to_dict()
    spec = TrainSpec.from_values({"model": row["model"], "trainable": row["trainable"], "seed": int(row["seed"])})
    assert spec.trial_id == tid, "not a trial of generate_store's"
    row = {k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in row.items()
           if k not in ("schema_version", "tables")}
    store.commit_trial(study, spec, {**row, **results}, {"bn": bn})


_MEASURED = """
import json, sys, time
t0 = time.perf_counter()
rc = 0
if sys.argv[1] == "cli":
    from sweeper.cli import main
    rc = main(sys.argv[2:])
elif sys.argv[1] == "read":  # a whole table, as Store.read gives it
    from sweeper.store import Store
    df = Store(sys.argv[2]).read(sys.argv[3], sys.argv[4])
    print(f"rows {len(df)}")
else:  # "load": some columns of a table, as a notebook's load() reads them (and categoricals)
    from sweeper import load
    df = load(sys.argv[2], sys.argv[3], sys.argv[4], columns=json.loads(sys.argv[5]),
              categorical=json.loads(sys.argv[6]) if len(sys.argv) > 6 else ())
    print(f"rows {len(df)}")
seconds = time.perf_counter() - t0
hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1])  # kB
print("__bench__ " + json.dumps({"seconds": seconds, "peak_rss_kb": hwm}), file=sys.stderr)
sys.exit(rc)
"""


def _run_measured(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `sweeper ARGS` (args[0] == "cli"), a Store.read (args[0] == "read", root, study,
    table) or a load (args[0] == "load", root, study, table, JSON list of columns, optionally JSON list
    of categorical columns) in a fresh
    interpreter: its wall time from outside, its time from its first import to its exit, and its
    peak resident memory (VmHWM of the child itself; wait4's ru_maxrss would count the parent's
    pages at fork). `env` adds to the environment."""
    env = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    marks = [line for line in proc.stderr.splitlines() if line.startswith("__bench__ ")]
    if proc.returncode != 0 or not marks:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    info = json.loads(marks[-1].split(" ", 1)[1])
    return {"wall_s": round(wall, 3), "inner_s": round(info["seconds"], 3),
            "peak_rss_mb": round(info["peak_rss_kb"] / 1024, 1), "stdout": proc.stdout}


def measure_figures(root: str | os.PathLike, study: str = "bench-figures", repeats: int = 3) -> dict[str, Any]:
    """Redraw every figure of a store with `sweeper figures` in a fresh interpreter, `repeats`
    times (the wall time includes its start and imports, as a user sees it; the median is the
    figure, since the first run after a pause is often twice as slow on a shared VM), and, in
    another interpreter, read the whole `bn` table into pandas, as a notebook's `load()` does
    (the figures themselves read only the three γ columns)."""
    draws = []
    for _ in range(repeats):
        out_dir = tempfile.mkdtemp(prefix="sweeper-bench-figs-")
        try:
            draws.append(_run_measured("cli", "figures", str(root), "--out", out_dir))
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    drawn = [line for line in draws[-1]["stdout"].splitlines() if line.startswith("drew")]
    read = _run_measured("read", str(root), study, "bn")
    rows = int(read["stdout"].split("rows ", 1)[1].split()[0])
    walls = [d["wall_s"] for d in draws]
    return {"figures_s": round(statistics.median(walls), 3), "figures_runs_s": walls,
            "figures_peak_rss_mb": max(d["peak_rss_mb"] for d in draws), "figures_drawn": len(drawn),
            "bn_read_s": read["inner_s"], "bn_read_wall_s": read["wall_s"], "bn_rows": rows,
            "bn_read_peak_rss_mb": read["peak_rss_mb"]}
