"""`sweeper bench`: the performance facts of project issue 9, measured side by side in one run.

Each `measure_*` function returns a plain dict and can run on its own (the tests call them at tiny
sizes; benchmarks/run_bench.py runs them under the machine's heavy-run lock). `run_bench` runs
them all and adds the headline keys (goals in GOALS):

  trial_overhead_s            Ray per-trial overhead through `runner.run_study` (tiny serial trials):
                              (wall - sum of in-trial time) / trials, split into the sweep's one-off
                              start (`sweep_fixed_start_s`) and a marginal part per trial; Tune's
                              default (reuse_actors=False) beside it
  sweep_efficiency            sum(in-trial seconds x CPUs) / (wall x cores) of a short CIFAR sweep
  step_speedup_vs_reference   our BN-only step (channels_last, frozen convs) vs a plain PyTorch loop;
                              bf16 autocast and the frozen-conv weight-gradient skip beside it
  sgemm_fraction              our step's FLOP rate (FlopCounterMode) / a large fp32 matmul's rate
  data_fraction               share of an epoch spent outside model steps
  figures_seconds_1000_trials `sweeper figures` on a generated store of 1,000 trials and their 8.2M
                              `bn` rows, in a fresh interpreter (peak RSS reported), and the bare
                              read of that `bn` table

Nothing here asserts a speed: the goals are shown beside the numbers (BENCHMARKS.md keeps them).
Every number is a wall-clock measurement on a machine that may be shared: the load average is
recorded with the results; take `flock /tmp/sweeper-heavy.lock` around a run you report.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

GOALS: dict[str, tuple[str, float]] = {  # key -> (comparison, goal)
    "trial_overhead_s": ("<=", 0.1),
    "sweep_efficiency": (">=", 0.85),
    "step_speedup_vs_reference": (">=", 1.3),
    "sgemm_fraction": (">=", 0.8),
    "data_fraction": ("<=", 0.05),
    "figures_seconds_1000_trials": ("<=", 10.0),
}


# == environment ===================================================================================
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    import pyarrow
    import ray
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.is_available(),
    }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# == Ray: per-trial overhead and sweep efficiency ==================================================
@contextlib.contextmanager
def ray_cluster(num_cpus: int | None = None):
    """A fresh local Ray cluster for the bench (shared by its Ray measurements), always shut down.
    Yields the seconds `ray.init` (and the driver's first import of Tune) took."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("sweeper bench starts its own Ray cluster; shut the current one down first")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for a throwaway local cluster
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    import ray.tune  # noqa: F401  (the driver's one-off import of Tune counts as start-up, not as a trial's)

    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()


def overhead_study(name: str, trials: int, cpus: float):
    """Tiny real trials (digits, ResNet-8 at width 8, BN-only, one epoch of 128 images): the
    runner's full path (spec, Tune trial, run_trial, Parquet commit) with little work in it."""
    from sweeper.study import Study

    return Study(
        name=name,
        dataset="digits",
        axes={"seed": list(range(trials))},
        recipe={"model": "resnet-8", "width": 8, "trainable": "bn", "epochs": 1, "train_size": 128,
                "test_size": 64, "batch_size": 64, "augment": "none"},
        measure=["bn"],
        resources={"cpu": cpus, "gpu": 0},
    )


def cifar_study(name: str, trials: int, epochs: int, train_size: int, test_size: int, dataset: str):
    """A short CIFAR sweep as a user runs it: BN-only ResNet-14 (the paper's recipe otherwise),
    one CPU per trial, seeds as the axis."""
    from sweeper.study import Study

    return Study(
        name=name,
        dataset=dataset,
        axes={"seed": list(range(trials))},
        recipe={"model": "resnet-14", "trainable": "bn", "epochs": epochs, "train_size": train_size,
                "test_size": test_size, "batch_size": 128,
                "augment": "crop_flip" if dataset != "digits" else "none"},
        measure=["bn"],
        resources={"cpu": 1, "gpu": 0},
    )


def timed_sweep(study, data_root: str | None = None, reuse_actors: bool = True, **kwargs) -> dict[str, Any]:
    """Run `study` through `sweeper.runner.run_study` into a throwaway store; return the wall time,
    the in-trial seconds of every trial (`train_seconds`, measured inside run_trial) and the
    driver-side completion times of the trials (from the runner's progress lines)."""
    from sweeper.runner import run_study
    from sweeper.store import Store

    root = tempfile.mkdtemp(prefix="sweeper-bench-")
    try:
        store = Store(root)
        completions: list[tuple[float, str]] = []

        def say(line: str) -> None:
            if "<- " in line:  # "[k/N] ... <- <trial id prefix> label: ..."
                completions.append((time.perf_counter(), line.split("<- ", 1)[1][:8]))

        t0 = time.perf_counter()
        summary = run_study(study, store, data_root=data_root, say=say, reuse_actors=reuse_actors, **kwargs)
        wall = time.perf_counter() - t0
        trials = store.read(study.name, "trials", columns=["trial_id", "status", "train_seconds", "cpus"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if summary.done != summary.planned:
        raise RuntimeError(f"bench sweep {study.name}: {summary.done} of {summary.planned} trials done "
                           f"({summary.failed or 'missing trials'})")
    work = {t[:8]: float(s) for t, s in zip(trials["trial_id"], trials["train_seconds"])}
    return {
        "wall_s": wall,
        "trials": len(trials),
        "work_s": work,
        "cpus": {t[:8]: float(c) for t, c in zip(trials["trial_id"], trials["cpus"])},
        "completions": [(ts - t0, tid) for ts, tid in completions],
    }


def _overhead_from(run: dict[str, Any]) -> dict[str, Any]:
    """Per-trial overhead of a serial sweep, (wall - sum of work) / trials, split exactly into
    the sweep's one-off start and end (time to the first trial's completion minus its work, plus
    the time after the last completion) and a marginal part per further trial (the gap between
    consecutive completions minus the later trial's work)."""
    n, wall, work = run["trials"], run["wall_s"], sum(run["work_s"].values())
    out = {"trials": n, "wall_s": round(wall, 3), "work_s": round(work, 3),
           "per_trial_s": round((wall - work) / n, 4)}
    done = run["completions"]
    if len(done) == n and all(tid in run["work_s"] for _, tid in done) and n >= 3:
        gaps = [(b[0] - a[0]) - run["work_s"][b[1]] for a, b in zip(done, done[1:])]
        out["marginal_per_trial_s"] = round(statistics.mean(gaps), 4)
        out["marginal_median_s"] = round(statistics.median(gaps), 4)
        out["marginal_max_s"] = round(max(gaps), 4)
        out["first_trial_done_s"] = round(done[0][0], 3)
        out["first_trial_work_s"] = round(run["work_s"][done[0][1]], 3)
        out["start_s"] = round(done[0][0] - run["work_s"][done[0][1]], 3)  # plan, Tune start, worker imports
        out["end_s"] = round(wall - done[-1][0], 3)  # Tune's shutdown, the final store check
        # per_trial_s == (start_s + end_s + (n - 1) * marginal_per_trial_s) / n
    return out


def measure_trial_overhead(trials: int = 16, reuse_actors: bool = True, cpus: float | None = None) -> dict[str, Any]:
    """Per-trial Ray overhead of `trials` tiny trials run one at a time (each asks for every CPU
    of the running cluster) through `run_study`. Needs a running Ray cluster (see ray_cluster)."""
    import ray

    cpus = float(cpus or ray.cluster_resources().get("CPU", 1))
    study = overhead_study(f"bench-overhead-{'reuse' if reuse_actors else 'default'}", trials, cpus)
    out = _overhead_from(timed_sweep(study, reuse_actors=reuse_actors))
    out["reuse_actors"] = reuse_actors
    return out


def measure_sweep_efficiency(trials: int = 4, epochs: int = 2, train_size: int = 5120, test_size: int = 1000,
                             data_root: str | None = None, ray_start_s: float = 0.0,
                             dataset: str | None = None) -> dict[str, Any]:
    """sum(in-trial seconds x CPUs) / (wall x cores) for a short CIFAR sweep through `run_study`
    (digits when no CIFAR-10 is found, or when asked for). The cluster is already up (as after `ray up`); the
    efficiency counting Ray's start-up too is reported beside it."""
    import ray

    root = resolve_cifar_root(data_root) if dataset in (None, "cifar10") else None
    dataset = "cifar10" if root else "digits"
    study = cifar_study("bench-sweep", trials, epochs, train_size if root else 0, test_size if root else 0, dataset)
    run = timed_sweep(study, data_root=str(root) if root else None)
    cores = float(ray.cluster_resources().get("CPU", os.cpu_count()))
    busy = sum(run["work_s"][t] * run["cpus"][t] for t in run["work_s"])
    return {
        "dataset": dataset,
        "trials": run["trials"],
        "epochs": epochs,
        "train_size": train_size if root else "all",
        "cores": cores,
        "wall_s": round(run["wall_s"], 3),
        "in_trial_cpu_s": round(busy, 3),
        "efficiency": round(busy / (run["wall_s"] * cores), 4),
        "efficiency_with_ray_start": round(busy / ((run["wall_s"] + ray_start_s) * cores), 4),
        "per_trial_work_s": round(busy / max(run["trials"], 1), 3),
    }


def resolve_cifar_root(data_root: str | None = None) -> Path | None:
    """A folder holding cifar-10-batches-py: the argument, $SWEEPER_DATA_ROOT, or ../shared/data/cifar10
    beside this checkout; None when none has it."""
    from sweeper.data import CIFAR10, find_cifar

    candidates = [data_root, os.environ.get("SWEEPER_DATA_ROOT"),
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"]
    for c in candidates:
        if c and find_cifar(Path(c).expanduser(), CIFAR10):
            return Path(c).expanduser().resolve()
    return None


# == the training step ============================================================================
def bn_only_model(depth: int = 14, width: int = 16, dataset: str = "cifar10", frozen: bool = True,
                  channels_last: bool = True):
    """The sweep's BN-only CIFAR ResNet exactly as `sweeper.train.run_trial` builds it (same
    init, `subsets.apply` sets requires_grad False on everything but γ, β; channels_last), and its
    optimizer from `build_optimizer`. frozen=False keeps requires_grad True on the frozen weights
    (their gradients are computed, then not applied: the masked alternative)."""
    import torch

    from sweeper.experiments.train import subsets
    from sweeper.nn.init import initialise
    from sweeper.experiments.train.model import build_model
    from sweeper.experiments.train.loop import build_optimizer
    from sweeper.experiments.train.spec import TrainSpec

    spec = TrainSpec.from_values({"model": f"resnet-{depth}", "width": width, "trainable": "bn", "dataset": dataset})
    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, spec.seed)
    selection = subsets.apply(model, spec.trainable, spec.random_k, spec.seed)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, masks = build_optimizer(model, spec, selection)
    if not frozen:
        for p in model.parameters():
            p.requires_grad_(True)  # gradients for every weight; the optimizer still holds γ, β only
    return model, optimizer, masks, spec


def reference_model(depth: int = 14, width: int = 16, dataset: str = "cifar10"):
    """The plain-PyTorch reference: the same network and weights, default settings (NCHW, fp32,
    every parameter requires_grad), BN-only training by optimizer parameter selection alone."""
    import torch

    from sweeper.experiments.train import subsets
    from sweeper.nn.init import initialise
    from sweeper.experiments.train.model import build_model
    from sweeper.experiments.train.spec import TrainSpec

    spec = TrainSpec.from_values({"model": f"resnet-{depth}", "width": width, "trainable": "bn", "dataset": dataset})
    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, spec.seed)
    names = set(subsets.norm_params(model))
    bn = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.SGD(bn, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return model, optimizer


def sweeper_step(model, optimizer, masks, spec, precision: str = "fp32") -> Callable:
    """One training step exactly as `sweeper.train.run_trial`'s loop runs it."""
    import torch
    import torch.nn.functional as F

    from sweeper.experiments.train import subsets
    from sweeper.experiments.train.loop import autocast as _autocast

    device = torch.device("cpu")
    spec = spec if precision == spec.precision else _with_precision(spec, precision)

    def step(x, y):
        with _autocast(spec, device), torch.set_grad_enabled(True):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        subsets.mask_gradients(masks, spec.weight_decay)
        optimizer.step()
        return loss

    return step


def _with_precision(spec, precision):
    import dataclasses

    return dataclasses.replace(spec, precision=precision)


def reference_step(model, optimizer) -> Callable:
    import torch.nn.functional as F

    def step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def cifar_batch(batch: int = 128, channels: int = 3, size: int = 32, classes: int = 10, channels_last: bool = False,
                seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def time_interleaved(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin so that a change
    in machine load hits every variant alike."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn`, counted by torch.utils.flop_counter.FlopCounterMode (matmuls and
    convolutions, forward and the backward kernels that actually run)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


OP_CLASSES = {  # profiler op name fragment -> class, for where a step's time goes
    "convolution": "conv", "mkldnn_conv": "conv", "batch_norm": "batch_norm", "threshold_backward": "relu",
    "clamp_min": "relu", "relu": "relu", "add": "add", "mm": "matmul", "addmm": "matmul",
}


def profile_step(fn: Callable[[], Any], steps: int = 3) -> dict[str, float]:
    """Share of a step's self CPU time per op class (conv, batch_norm, relu, add, matmul, other),
    from torch.profiler: where the time goes that FLOPs do not account for."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    shares: dict[str, float] = {}
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        name = ev.key[len("aten::"):]
        cls = next((c for frag, c in OP_CLASSES.items() if frag in name), "other")
        shares[cls] = shares.get(cls, 0.0) + ev.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: round(v / total, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


#: speed-up ratios of measure_step: (key, slower variant, faster variant) -> seconds ratio
SPEEDUPS = (
    ("speedup_vs_reference", "reference", "ours"),
    ("bf16_speedup_vs_reference", "reference", "ours_bf16"),
    ("bf16_speedup_vs_fp32", "ours", "ours_bf16"),
    ("frozen_skip_speedup", "masked", "ours"),
    ("compiled_speedup_vs_ours", "ours", "compiled"),
    ("bn_only_speedup_vs_full", "full", "ours"),
)


def measure_step(depth: int = 14, width: int = 16, batch: int = 128, threads: int = 1, repeats: int = 10,
                 warmup: int = 2, variants: tuple[str, ...] | None = None, sgemm_n: int | None = None,
                 profile: bool = False) -> dict[str, Any]:
    """Seconds per training step of the BN-only ResNet, side by side:
      ours       sweeper's step: channels_last, frozen weights requires_grad False, fp32
      ours_bf16  the same under bf16 autocast
      masked     channels_last, fp32, frozen weights requires_grad True (weight gradients computed)
      reference  plain PyTorch: NCHW, fp32, every requires_grad True, optimizer holds γ, β only
      full       every parameter trained (channels_last, fp32), for scale
      compiled   ours under torch.compile (inductor; the recipe's `compile` field): opt-in, its
                 first calls compile for about a minute on a CPU
    Each runs on its own copy of the same initial network and the same batch. With `sgemm_n`,
    an n x n fp32 matmul joins the round-robin, so `sgemm_fraction` compares rates measured
    under the same load."""
    import torch

    variants = variants or ("ours", "ours_bf16", "masked", "reference", "full")
    steps: dict[str, Callable] = {}
    flops: dict[str, int] = {}
    with torch_threads(threads):
        x_nchw, y = cifar_batch(batch)
        x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
        for name in variants:
            if name in ("ours", "ours_bf16", "masked", "compiled"):
                model, opt, masks, spec = bn_only_model(depth, width, frozen=name != "masked")
                if name == "compiled":
                    model = torch.compile(model, backend="inductor")
                step = sweeper_step(model, opt, masks, spec, "bf16" if name == "ours_bf16" else "fp32")
                steps[name] = (lambda s: lambda: s(x_cl, y))(step)
            elif name == "reference":
                model, opt = reference_model(depth, width)
                step = reference_step(model, opt)
                steps[name] = (lambda s: lambda: s(x_nchw, y))(step)
            elif name == "full":
                model, opt, masks, spec = bn_only_model(depth, width, frozen=False)
                opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                      weight_decay=spec.weight_decay)
                step = sweeper_step(model, opt, {}, spec)
                steps[name] = (lambda s: lambda: s(x_cl, y))(step)
            else:
                raise ValueError(f"unknown step variant {name!r}")
        for name in ("ours", "reference", "compiled"):
            if name in steps:
                flops[name] = count_flops(steps[name])
        shares = profile_step(steps["ours"]) if profile and "ours" in steps else None
        if sgemm_n:
            g = torch.Generator().manual_seed(0)
            a, b = torch.randn(sgemm_n, sgemm_n, generator=g), torch.randn(sgemm_n, sgemm_n, generator=g)
            c = torch.empty(sgemm_n, sgemm_n)
            steps["sgemm"] = lambda: torch.mm(a, b, out=c)
        seconds = time_interleaved(steps, repeats, warmup)
    out: dict[str, Any] = {"model": f"resnet-{depth}" + (f" width {width}" if width != 16 else ""),
                           "batch": batch, "threads": threads, "repeats": repeats,
                           "seconds": {k: round(v, 5) for k, v in seconds.items()},
                           "flops": flops}
    s = seconds
    for key, slower, faster in SPEEDUPS:
        if slower in s and faster in s:
            out[key] = round(s[slower] / s[faster], 3)
    if "ours" in flops:
        out["ours_gflops_per_s"] = round(flops["ours"] / s["ours"] / 1e9, 3)
    if shares:
        out["ours_time_shares"] = shares
        if "conv" in shares and "ours" in flops:  # conv FLOPs over conv time alone
            out["ours_conv_gflops_per_s"] = round(flops["ours"] / (s["ours"] * shares["conv"]) / 1e9, 3)
    if sgemm_n:
        out["sgemm_n"] = sgemm_n
        out["sgemm_gflops_per_s"] = round(2 * sgemm_n**3 / s["sgemm"] / 1e9, 3)
        if "ours" in flops:
            out["sgemm_fraction"] = round(out["ours_gflops_per_s"] / out["sgemm_gflops_per_s"], 4)
    return out


def measure_sgemm(n: int = 2048, threads: int = 1, repeats: int = 5) -> dict[str, Any]:
    """FLOP rate of a large fp32 matmul (n x n times n x n, 2 n^3 FLOPs) at `threads` threads:
    the practical peak the step's rate is compared against."""
    import torch

    with torch_threads(threads):
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        seconds = time_interleaved({"mm": lambda: torch.mm(a, b, out=out)}, repeats, warmup=1)["mm"]
    return {"n": n, "threads": threads, "seconds": round(seconds, 5), "gflops_per_s": round(2 * n**3 / seconds / 1e9, 3)}


def measure_data_fraction(data_root: str | None = None, train_size: int = 2560, depth: int = 14, threads: int = 1,
                          batch: int = 128) -> dict[str, Any]:
    """Share of a training epoch spent outside model steps: sweeper.train's own loop (the same
    Batches, augmentation and step), with the time spent in the batch iterator (indexing the
    uint8 tensors, normalising, crop+flip, channels_last copy) split from the step time. The
    one-off load of the dataset (cached per process) is reported apart."""
    import torch

    from sweeper.data import load_arrays
    from sweeper.experiments.train.loop import epoch_generator as _epoch_generator, prepare_data
    from sweeper.experiments.train.spec import TrainSpec

    root = resolve_cifar_root(data_root)
    dataset = "cifar10" if root else "digits"
    spec = TrainSpec.from_values({"model": f"resnet-{depth}", "trainable": "bn", "dataset": dataset,
                                  "train_size": train_size if root else 0, "test_size": 512 if root else 0,
                                  "batch_size": batch, "augment": "crop_flip" if root else "none"})
    with torch_threads(threads):
        t0 = time.perf_counter()
        load_arrays(dataset, str(root) if root else None)
        load_s = time.perf_counter() - t0
        train, _ = prepare_data(spec, str(root) if root else None, torch.device("cpu"), channels_last=True)
        model, opt, masks, spec_ = bn_only_model(depth, spec.width, dataset=dataset)
        step = sweeper_step(model, opt, masks, spec_)
        data_s = step_s = 0.0
        steps = 0
        for epoch in range(2):  # epoch 0 warms up; epoch 1 is measured
            g = _epoch_generator(spec.seed, epoch)
            data_s = step_s = 0.0
            steps = 0
            batches = train.epoch(g)
            while True:
                t0 = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                step(x, y)
                t2 = time.perf_counter()
                data_s += t1 - t0
                step_s += t2 - t1
                steps += 1
    return {"dataset": dataset, "images": steps * batch, "steps": steps, "threads": threads,
            "data_s": round(data_s, 4), "step_s": round(step_s, 4),
            "data_fraction": round(data_s / (data_s + step_s), 4), "dataset_load_s": round(load_s, 3)}


# == figures from a big store ======================================================================
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


_MEASURED = """
import json, sys, time
t0 = time.perf_counter()
rc = 0
if sys.argv[1] == "cli":
    from sweeper.cli import main
    rc = main(sys.argv[2:])
else:
    from sweeper.store import Store
    df = Store(sys.argv[2]).read(sys.argv[3], sys.argv[4])
    print(f"rows {len(df)}")
seconds = time.perf_counter() - t0
hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1])  # kB
print("__bench__ " + json.dumps({"seconds": seconds, "peak_rss_kb": hwm}), file=sys.stderr)
sys.exit(rc)
"""


def _run_measured(*args: str) -> dict[str, Any]:
    """Run `sweeper ARGS` (args[0] == "cli") or a Store.read (args[0] == "read", root, study,
    table) in a fresh interpreter: its wall time from outside, its time from its first import to
    its exit, and its peak resident memory (VmHWM of the child itself; wait4's ru_maxrss would
    count the parent's pages at fork)."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
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


# == all of it =====================================================================================
def run_bench(quick: bool = False, data_root: str | None = None, threads: int = 1,
              say: Callable[[str], None] = lambda s: None, only: set[str] | None = None) -> dict[str, Any]:
    """Every measurement, in one run; `quick` sizes it for a 2-core laptop (a few minutes)."""
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
        with ray_cluster() as start_s:
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


# == command line ==================================================================================
def cmd_bench(args) -> int:
    parts = set(args.only.split(",")) if args.only else None
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.json else (lambda s: None)
    results = run_bench(quick=args.quick, data_root=args.data_root, threads=args.threads, say=say, only=parts)
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
    p.add_argument("--only", default=None, help="comma-separated subset of: step, data, ray, figures")
    p.set_defaults(fn=cmd_bench)
