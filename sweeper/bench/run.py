"""All the measurements in one run (`run_bench`), the goals they are held against, and the table
`sweeper bench` prints."""
from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any, Callable

from sweeper.bench.common import environment, load_average
from sweeper.bench.data_share import measure_data_fraction
from sweeper.bench.figures import generate_store, measure_figures
from sweeper.bench.step import measure_step
from sweeper.bench.store import headline, measure_store
from sweeper.bench.sweeps import measure_sweep_efficiency, measure_trial_overhead
from sweeper.orchestration.connect import local_cluster

GOALS: dict[str, tuple[str, float]] = {  # key -> (comparison, goal)
    "trial_overhead_s": ("<=", 0.1),
    "sweep_efficiency": (">=", 0.85),
    "step_speedup_vs_reference": (">=", 1.3),
    "sgemm_fraction": (">=", 0.8),
    "data_fraction": ("<=", 0.05),
    "figures_seconds_1000_trials": ("<=", 10.0),
    # issue 19: a compacted store of 10,000 trials, on this 2-core machine
    "store_local_compacted_figures_seconds": ("<=", 10.0),
    "store_local_compacted_status_seconds": ("<=", 3.0),
    "store_local_compacted_peak_rss_gb": ("<=", 2.0),
}


def run_bench(quick: bool = False, data_root: str | None = None, threads: int = 1,
              say: Callable[[str], None] = lambda s: None, only: set[str] | None = None,
              trials: int = 10_000) -> dict[str, Any]:
    """Every measurement, in one run; `quick` sizes it for a 2-core laptop (a few minutes). The
    store measurement (a generated store of `trials` trials, before and after compaction, local
    and on an S3 server) runs only when named in `only`: at 10,000 trials it takes an hour."""
    want = (lambda name: only is None or name in only)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": quick,
                               "environment": environment(), "load_average_start": load_average(),
                               "threads_per_trial": threads}
    details: dict[str, Any] = {}
    t_all = time.perf_counter()

    if want("step"):
        say("training step: ours vs reference, bf16, frozen-conv skip, fp32 matmul ...")
        step = measure_step(threads=threads, repeats=8 if quick else 25, sgemm_n=2048, profile=True,
                            variants=("ours", "ours_bf16", "masked", "reference") if quick else None)
        details["step"] = step
        results["step_speedup_vs_reference"] = step["speedup_vs_reference"]
        results["bf16_speedup_vs_fp32"] = step.get("bf16_speedup_vs_fp32")
        results["bf16_speedup_vs_reference"] = step.get("bf16_speedup_vs_reference")
        results["frozen_conv_skip_speedup"] = step.get("frozen_skip_speedup")
        results["sgemm_fraction"] = step["sgemm_fraction"]
        results["conv_sgemm_fraction"] = round(step["ours_conv_gflops_per_s"] / step["sgemm_gflops_per_s"], 4)
        results["step_time_share_conv"] = step["ours_time_shares"].get("conv")
        if not quick:  # how the fraction grows with width (more arithmetic per byte moved)
            say("training step at width 64 (WRN-14-4) ...")
            wide = measure_step(width=64, threads=threads, repeats=7, variants=("ours",), sgemm_n=2048, profile=True)
            details["step_wrn_14_4"] = wide
            results["sgemm_fraction_wrn_14_4"] = wide["sgemm_fraction"]

    if want("data"):
        say("data pipeline share of an epoch ...")
        data = measure_data_fraction(data_root, train_size=2560 if quick else 10240, threads=threads)
        details["data"] = data
        results["data_fraction"] = data["data_fraction"]

    if want("ray"):
        with local_cluster() as start_s:
            details["ray_start_s"] = round(start_s, 3)
            n, n_default = (32, 12) if quick else (64, 32)
            say(f"Ray per-trial overhead: {n} tiny trials, runner settings ...")
            ours = measure_trial_overhead(n, reuse_actors=True)
            say(f"Ray per-trial overhead: {n_default} tiny trials, Tune's default (no actor reuse) ...")
            default = measure_trial_overhead(n_default, reuse_actors=False)
            details["overhead"] = ours
            details["overhead_tune_default"] = default
            results["trial_overhead_s"] = ours["per_trial_s"]
            results["trial_overhead_marginal_s"] = ours.get("marginal_per_trial_s")
            if "start_s" in ours:
                results["sweep_fixed_start_s"] = round(ours["start_s"] + ours["end_s"], 3)
            results["trial_overhead_tune_default_s"] = default["per_trial_s"]
            results["trial_overhead_tune_default_marginal_s"] = default.get("marginal_per_trial_s")
            say("short CIFAR sweep through the runner ...")
            sweep = measure_sweep_efficiency(trials=4 if quick else 6, epochs=2 if quick else 3,
                                             train_size=5120 if quick else 10240, data_root=data_root,
                                             ray_start_s=start_s)
            details["sweep"] = sweep
            results["sweep_efficiency"] = sweep["efficiency"]
            results["sweep_efficiency_with_ray_start"] = sweep["efficiency_with_ray_start"]

    if want("figures"):
        say("figures from a generated 1,000-trial store ...")
        root = tempfile.mkdtemp(prefix="sweeper-bench-store-")
        try:
            gen = generate_store(root, trials=1000)
            figs = measure_figures(root, gen["study"])
        finally:
            shutil.rmtree(root, ignore_errors=True)
        details["figures"] = {**gen, **figs}
        results["figures_seconds_1000_trials"] = figs["figures_s"]
        results["figures_peak_rss_mb"] = figs["figures_peak_rss_mb"]
        results["bn_read_seconds_1000_trials"] = figs["bn_read_s"]
        results["bn_read_peak_rss_mb"] = figs["bn_read_peak_rss_mb"]

    if only is not None and "store" in only:
        say(f"a {trials}-trial store before and after compaction, local and on S3 ...")
        store = measure_store(trials=trials, say=say)
        details["store"] = store
        results.update(headline(store))

    results["load_average_end"] = load_average()
    results["bench_seconds"] = round(time.perf_counter() - t_all, 1)
    results["goals"] = {k: f"{op} {v:g}" for k, (op, v) in GOALS.items()}
    results["met"] = {k: _met(k, results.get(k)) for k in GOALS if results.get(k) is not None}
    results["details"] = details
    return results


def _met(key: str, value) -> bool:
    op, goal = GOALS[key]
    return bool(value <= goal) if op == "<=" else bool(value >= goal)


ROWS = [  # (key, what it is measured against)
    ("trial_overhead_s", "(run_study wall - in-trial s) / trials, tiny serial trials, runner settings"),
    ("trial_overhead_marginal_s", "per extra trial: completion gap minus its work (the sweep's fixed start excluded)"),
    ("sweep_fixed_start_s", "one-off per sweep: plan, Tune start, actor start, imports in the worker; end"),
    ("trial_overhead_tune_default_s", "the same, Tune's default (reuse_actors=False)"),
    ("trial_overhead_tune_default_marginal_s", "marginal, Tune's default (a new worker per trial)"),
    ("sweep_efficiency", "sum(in-trial s x CPUs) / (wall x cores), short CIFAR sweep, cluster up"),
    ("sweep_efficiency_with_ray_start", "the same with ray.init's start-up in the wall"),
    ("step_speedup_vs_reference", "plain loop (NCHW, fp32, all requires_grad) / our BN-only step, fp32"),
    ("bf16_speedup_vs_fp32", "our step fp32 / our step under bf16 autocast"),
    ("bf16_speedup_vs_reference", "plain fp32 loop / our step under bf16 autocast"),
    ("frozen_conv_skip_speedup", "BN-only step, convs requires_grad True (masked) / False"),
    ("sgemm_fraction", "our step's FlopCounterMode FLOP/s / fp32 matmul FLOP/s, same threads"),
    ("conv_sgemm_fraction", "the same, counting only the step's time in conv kernels (profiler)"),
    ("step_time_share_conv", "share of our step's CPU time in conv kernels; the rest is BN, ReLU, add"),
    ("sgemm_fraction_wrn_14_4", "sgemm_fraction for WRN-14-4 (width 64)"),
    ("data_fraction", "batch iterator time / (iterator + step time) over one epoch"),
    ("figures_seconds_1000_trials", "`sweeper figures` wall (fresh subprocess, median of 3) on 1,000 trials + 8.2M bn rows"),
    ("figures_peak_rss_mb", "peak RSS of that subprocess, MB"),
    ("bn_read_seconds_1000_trials", "Store.read of the whole 8.2M-row bn table into pandas"),
    ("bn_read_peak_rss_mb", "peak RSS of the read subprocess, MB"),
    *[(f"store_{w}_{s}_{k}", f"{what} ({s}, {place})")
      for w, place in (("local", "local folder"), ("s3", "S3 server"))
      for s in ("uncompacted", "compacted")
      for k, what in (("figures_seconds", "`sweeper figures` wall, fresh subprocess"),
                      ("status_seconds", "`sweeper status --json` wall"),
                      ("load_bn_seconds", "load(bn, columns=[trial_id, gamma]) wall"),
                      ("peak_rss_gb", "largest peak RSS of those three, GB"))],
    *[(f"store_{w}_{k}", f"{what} ({place})") for w, place in (("local", "local folder"), ("s3", "S3 server"))
      for k, what in (("files_before", "Parquet files before compaction"), ("files_after", "after"),
                      ("compact_seconds", "`sweeper compact` wall"))],
]


def format_table(results: dict[str, Any]) -> str:
    lines = [f"sweeper bench{' --quick' if results.get('quick') else ''}  {results['date']}",
             f"{results['environment']['cpu']}, {results['environment']['cores']} cores; torch "
             f"{results['environment']['torch']}, ray {results['environment']['ray']}, python "
             f"{results['environment']['python']}; load {results['load_average_start']} -> "
             f"{results.get('load_average_end')}; {results.get('threads_per_trial')} torch thread(s) per trial",
             ""]
    header = ("measure", "value", "goal", "met", "measured against")
    body = []
    for key, what in ROWS:
        if results.get(key) is None:
            continue
        goal = results["goals"].get(key, "")
        met = {True: "yes", False: "NO"}.get(results["met"].get(key), "") if key in GOALS else ""
        body.append((key, f"{results[key]:.4g}", goal, met, what))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    for r in [header, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    lines.append(f"\n({results['bench_seconds']} s)")
    return "\n".join(lines)
