"""What a sweep will cost before it starts: trials x epochs x images x FLOPs per image, over the
rate of the hardware the trials ask for.

FLOPs are those of the convolutions and linear layers, the ones torch's FLOP counter counts. A
training step costs about 3 forward passes when weights train (forward, input gradients, weight
gradients) and about 2 when every conv is frozen (no weight-gradient kernels: the BN-only case).

Rates:
- CPU trials: this machine's measured matrix-multiply rate with the trial's threads, in the trial's
  precision (fp32 or bf16; measured only when some trial runs on CPUs).
- GPU trials: a card's stated dense rate for the trial's precision (`GPUS`), times an efficiency
  factor: the share of that rate a conv net's training step reaches. Both are stated assumptions,
  printed with every estimate and changeable (--gpu, --efficiency). The one GPU measurement, the
  laptop-scale width-8 ResNets on an H200, reached 0.4% of the stated bf16 rate (kernel launches
  bound them), so for networks narrower than NARROW the estimate says it is a floor.

A cluster's wall time comes from a small simulation of the trials in the order Tune starts them,
each worker holding as many at a time as its GPUs and CPUs allow, the trials on a worker sharing its
GPUs' rate equally (one trial never uses more than one GPU: a trial trains on one device).
"""
from __future__ import annotations

import functools
import math
import os
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

from sweeper.errors import SweeperError
from sweeper.experiment import TrialCost
from sweeper.experiments import EXPERIMENTS
from sweeper.registry import Registry

EFFICIENCY = 0.8  # share of the CPU matmul rate a training step reaches (see BENCHMARKS.md)
NARROW = 16  # base widths below this reach far less of it (docs/laptop_scale.md measured 3.5-7x slower)


def trial_cost(spec) -> TrialCost | None:
    """What one trial computes, from its experiment kind's cost hook (None: the kind has none)."""
    return EXPERIMENTS[spec.experiment].trial_cost(spec)


# -- CPU rate --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def matmul_rate(threads: int = 1, precision: str = "fp32") -> float:
    """FLOP/s of a large matrix product on this machine, with `threads` threads, in `precision`
    (a bf16 trial runs its convolutions under bf16 autocast: BENCHMARKS.md measured its step
    1.8x faster than fp32, and a bf16 matrix product about 2x here)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(1024, 1024).to(torch.bfloat16 if precision == "bf16" else torch.float32)
        a @ a
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < 0.3:
            a @ a
            reps += 1
        return 2 * 1024**3 * reps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)


def estimate(specs, cpus_per_trial: float = 1.0, time_steps: bool = False) -> dict:
    """Seconds of compute per trial and in all, at this machine's measured rate per trial; with
    `time_steps`, from real training steps of each network timed here (the experiment's timing
    hook) where its kind has one."""
    costs = list(map(trial_cost, specs))
    known = [c for c in costs if c is not None]
    if not known:  # nothing to time: no need to measure the rate
        return {"flops_per_second": None, "trial_seconds": [None] * len(costs), "total_flops": 0,
                "total_trial_seconds": 0.0, "unknown_trials": len(costs), "device": "cpu"}
    threads = max(1, min(int(cpus_per_trial), os.cpu_count() or 1))
    rates = {p: matmul_rate(threads, p) * EFFICIENCY for p in sorted({c.precision for c in known})}
    seconds = [None if c is None else c.flops / rates[c.precision] for c in costs]
    timed = _timed(specs, threads) if time_steps else {}
    seconds = [timed.get(i, s) for i, s in enumerate(seconds)]
    total_flops, total_seconds = sum(c.flops for c in known), sum(s for s in seconds if s is not None)
    return {
        "flops_per_second": total_flops / total_seconds,  # the trials' mean rate (their precisions')
        "rates": rates,
        "trial_seconds": seconds,
        "total_flops": total_flops,
        "total_trial_seconds": total_seconds,
        "unknown_trials": len(costs) - len(known),
        "device": "cpu",
        "timed_trials": len(timed),  # of them, timed from real steps (--time-steps)
    }


def _timed(specs, threads: int) -> dict[int, float]:
    """Trial index -> seconds, for the trials whose experiment kind can time its steps here."""
    by_kind: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        by_kind.setdefault(spec.experiment, []).append(i)
    out = {}
    for kind, at in by_kind.items():
        seconds = EXPERIMENTS[kind].trial_seconds([specs[i] for i in at], threads)
        if seconds is not None:
            out.update(zip(at, seconds))
    return out


# -- GPU rates -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Card:
    """A GPU's stated dense peak rates (FLOP/s, no structured sparsity); None where the card has
    no tensor-core support for the format."""

    name: str
    fp32: float
    tf32: float | None
    bf16: float | None
    source: str


T = 1e12
GPUS: Registry[Card] = Registry("GPU")
# NVIDIA's datasheets (SXM parts for A100/H100/V100). NVIDIA publishes no datasheet for AWS's A10G;
# its figures are the ones AWS and NVIDIA quote for g5 instances (half the A10's tensor rates).
GPUS.add("A10G", Card("NVIDIA A10G", 31.2 * T, 35 * T, 70 * T, "AWS g5"), "a10g")
GPUS.add("A10", Card("NVIDIA A10", 31.2 * T, 62.5 * T, 125 * T, "NVIDIA A10 datasheet"), "a10")
GPUS.add("T4", Card("NVIDIA T4", 8.1 * T, None, None, "NVIDIA T4 datasheet"), "t4")
GPUS.add("L4", Card("NVIDIA L4", 30.3 * T, 60 * T, 121 * T, "NVIDIA L4 datasheet"), "l4")
GPUS.add("V100", Card("NVIDIA V100 SXM2", 15.7 * T, None, None, "NVIDIA V100 datasheet"), "v100")
GPUS.add("A100", Card("NVIDIA A100 SXM", 19.5 * T, 156 * T, 312 * T, "NVIDIA A100 datasheet"), "a100")
GPUS.add("H100", Card("NVIDIA H100 SXM", 67 * T, 494 * T, 989 * T, "NVIDIA H100 datasheet"), "h100")
DEFAULT_GPU = "A10G"  # cluster.yaml's g5 workers
#: Assumed, not measured (no GPU here): the share of the stated rate a training step of a conv net
#: reaches. Small networks (CIFAR ResNets of width 16: many small kernels) reach less, wide ones more.
GPU_EFFICIENCY = 0.3
#: PyTorch runs fp32 convolutions in TF32 on cards that have it (torch.backends.cudnn.conv.fp32_precision
#: is "tf32" by default) and sweeper leaves that default alone; set False if it ever pins them to IEEE fp32.
FP32_CONVS_IN_TF32 = True


def card_rate(card: Card, precision: str) -> tuple[float, str]:
    """(stated FLOP/s, which rate that is) for a trial of `precision` on `card`."""
    if precision == "bf16":
        if card.bf16 is None:
            return card.fp32, f"the fp32 rate ({card.name} has no bf16 tensor cores)"
        return card.bf16, "the bf16 tensor-core rate"
    if FP32_CONVS_IN_TF32 and card.tf32 is not None:
        return card.tf32, "the TF32 tensor-core rate (PyTorch runs fp32 convolutions in TF32 on this card)"
    return card.fp32, "the fp32 rate"


# -- the cluster ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """The shape of the workers trials run on."""

    workers: int
    gpus_per_worker: float = 1.0
    cpus_per_worker: float | None = None  # None: not known, CPUs do not limit
    gpu: str | None = None  # the card its GPU workers carry, when the file says
    source: str = ""  # where this came from, for the printed assumption


# Instance types (AWS, by family) and accelerator names (GCP) -> the card they carry.
AWS_FAMILIES = {"g5": "A10G", "g4dn": "T4", "g6": "L4", "p3": "V100", "p3dn": "V100", "p4d": "A100",
                "p4de": "A100", "p5": "H100"}
ACCELERATOR_TOKENS = {"a10g": "A10G", "a10": "A10", "t4": "T4", "l4": "L4", "v100": "V100", "a100": "A100",
                      "h100": "H100"}


def _card_of(node_config: dict) -> str | None:
    instance = str(node_config.get("InstanceType") or node_config.get("machineType") or "")
    family = instance.split(".")[0]
    if family in AWS_FAMILIES:
        return AWS_FAMILIES[family]
    for accel in node_config.get("guestAccelerators") or []:
        for token in str(accel.get("acceleratorType", "")).lower().split("-"):
            if token in ACCELERATOR_TOKENS:
                return ACCELERATOR_TOKENS[token]
    return None


def read_cluster(path: str | Path) -> Cluster:
    """The GPU worker type of a Ray cluster-launcher file: how many workers at most, their GPUs,
    CPUs and card (by instance type or accelerator name)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweeperError("no such cluster file", str(path))
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweeperError(f"does not parse: {str(e).splitlines()[0]}", str(path)) from None
    types = (config or {}).get("available_node_types") if isinstance(config, dict) else None
    if not isinstance(types, dict) or not types:
        raise SweeperError("no available_node_types: not a Ray cluster file", str(path))
    head = config.get("head_node_type")
    gpu_types = []
    for name, node in types.items():
        if name == head or not isinstance(node, dict):
            continue
        resources = node.get("resources") or {}
        card = _card_of(node.get("node_config") or {})
        gpus = resources.get("GPU")
        if gpus is None:  # not declared: the accelerators GCP names, else one for a known GPU instance
            accels = (node.get("node_config") or {}).get("guestAccelerators") or []
            gpus = sum(int(a.get("acceleratorCount", 1)) for a in accels) or (1 if card else 0)
        if gpus > 0:
            gpu_types.append((name, node, float(gpus), resources.get("CPU"), card))
    if not gpu_types:
        raise SweeperError("available_node_types: no worker type has a GPU", str(path))
    name, node, gpus, cpus, card = max(gpu_types, key=lambda t: t[1].get("max_workers", 0))  # the main one
    workers = node.get("max_workers", config.get("max_workers", 1))
    if "max_workers" in config:
        workers = min(workers, config["max_workers"])
    instance = (node.get("node_config") or {}).get("InstanceType") or (node.get("node_config") or {}).get("machineType")
    return Cluster(int(workers), gpus, None if cpus is None else float(cpus), card,
                   f"{path.name}'s worker type {name}" + (f" ({instance})" if instance else ""))


# -- wall time -----------------------------------------------------------------------------------
def wall_time(alone: list[float], workers: int, per_worker: int, gpus_per_worker: float) -> float:
    """Seconds until the last trial ends. alone[i]: seconds trial i takes with a GPU to itself.
    Trials start in order, each on the worker running the fewest (up to per_worker at a time); the
    k trials on a worker share its GPUs, each progressing at min(1, gpus/k) of its own pace."""
    queue = deque(alone)
    running: list[list[float]] = [[] for _ in range(workers)]
    eps = 1e-9 * max(alone, default=0.0)
    now = 0.0

    def fill():
        while queue:
            w = min(range(workers), key=lambda i: len(running[i]))
            if len(running[w]) >= per_worker:
                return
            running[w].append(queue.popleft())

    fill()
    while any(running):
        pace = [min(1.0, gpus_per_worker / len(r)) if r else 0.0 for r in running]
        step = min(min(r) / p for r, p in zip(running, pace) if r)
        now += step
        running = [[x - step * p for x in r if x - step * p > eps] for r, p in zip(running, pace)]
        fill()
    return now


def trials_per_worker(cluster: Cluster, gpus_per_trial: float, cpus_per_trial: float) -> int:
    """How many trials one worker holds at a time (Ray places a trial where its whole request fits)."""
    if gpus_per_trial > cluster.gpus_per_worker:
        raise SweeperError(f"each trial asks for {gpus_per_trial:g} GPUs, but a worker has {cluster.gpus_per_worker:g} "
                           f"(workers from {cluster.source})", "--gpus-per-trial")
    slots = math.floor(cluster.gpus_per_worker / gpus_per_trial + 1e-9)
    if cluster.cpus_per_worker is not None and cpus_per_trial > 0:
        slots = min(slots, math.floor(cluster.cpus_per_worker / cpus_per_trial + 1e-9))
        if slots == 0:
            raise SweeperError(f"each trial asks for {cpus_per_trial:g} CPUs, but a worker has "
                               f"{cluster.cpus_per_worker:g} (workers from {cluster.source})", "--cpus-per-trial")
    return slots


def estimate_gpu(specs, card: Card, cluster: Cluster, gpus_per_trial: float, cpus_per_trial: float,
                 efficiency: float = GPU_EFFICIENCY) -> dict:
    """GPU-hours and wall time of `specs` on `cluster`'s workers, each trial at the card's stated
    rate for its precision times `efficiency` while it has a GPU to itself."""
    costs = [trial_cost(s) for s in specs]
    known = [(c.flops, c.precision) for c in costs if c is not None]
    rates = {p: card_rate(card, p) for p in sorted({p for _, p in known})}
    alone = [f / (rates[p][0] * efficiency) for f, p in known]
    try:
        per_worker, problem = trials_per_worker(cluster, gpus_per_trial, cpus_per_trial), None
    except SweeperError as e:  # a finding to report, not bad input: the trials need other workers
        per_worker, problem = 0, e.message
    total = sum(alone)
    return {
        "device": "gpu",
        # the keys CPU estimates have: here the rate of one trial alone on a card
        "flops_per_second": sum(f for f, _ in known) / total if total else None,
        "trial_seconds": [None if c is None else c.flops / (rates[c.precision][0] * efficiency) for c in costs],
        "total_flops": sum(f for f, _ in known),
        "total_trial_seconds": total,
        "unknown_trials": len(costs) - len(known),
        "gpu": card.name,
        "efficiency": efficiency,
        "rates": {p: {"stated_flops_per_second": r, "rate": what, "flops_per_second": r * efficiency}
                  for p, (r, what) in rates.items()},
        "gpus_per_trial": gpus_per_trial,
        "cpus_per_trial": cpus_per_trial,
        "workers": cluster.workers,
        "gpus_per_worker": cluster.gpus_per_worker,
        "trials_per_worker": per_worker,
        "gpu_hours": total / 3600,
        "wall_seconds": wall_time(alone, cluster.workers, per_worker, cluster.gpus_per_worker) if per_worker else None,
        "fits": problem is None,  # False: no worker can hold a trial (`problem` says why); `run` would wait forever
        "problem": problem,
    }


def human(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


# -- what `sweeper plan` prints -----------------------------------------------------------------
def describe(specs, cpus: float, gpus: float, gpu: str | None = None, cluster_file: str | None = None,
             workers: int | None = None, efficiency: float | None = None,
             time_steps: bool = False, scale: str = "full") -> tuple[dict, list[str]]:
    """The estimate of `specs` and the lines `sweeper plan` prints to state it with its assumptions.
    `gpu`, `cluster_file`, `workers`, `efficiency` and `time_steps` are plan's --gpu, --cluster,
    --workers, --efficiency and --time-steps (None, False: not given)."""
    if gpus <= 0:  # CPU trials: this machine's measured rate (measured only here)
        from sweeper.preflight import slow_cpu_bf16  # `scale` names the --set that changes precision

        est, lines = _describe_cpu(specs, cpus, time_steps)
        note = slow_cpu_bf16(specs, gpus, scale) if lines else None
        return est, lines + ([f"  {note}"] if note else [])
    if time_steps:  # the trials ask for GPUs, and none is here to time them on
        raise SweeperError("times CPU trials on this machine; these trials ask for GPUs "
                           "(add --gpus-per-trial 0 to time them here as CPU trials)", "--time-steps")
    if efficiency is not None and not 0 < efficiency <= 1:
        raise SweeperError(f"must be in (0, 1], got {efficiency:g}", "--efficiency")
    cluster_file = cluster_file or ("cluster.yaml" if Path("cluster.yaml").is_file() else None)
    cluster = read_cluster(cluster_file) if cluster_file else None
    if gpu:
        try:
            gpu, why = GPUS.canonical(gpu), "--gpu"
        except SweeperError as e:
            raise e.at("--gpu") from None
    elif cluster is not None and cluster.gpu:
        gpu, why = cluster.gpu, cluster.source
    else:
        gpu, why = DEFAULT_GPU, (f"the default, as {cluster.source} names no card in the table" if cluster
                                 else "the default, with no cluster file naming one: --cluster FILE")
    if workers is not None and workers < 1:
        raise SweeperError(f"must be at least 1, got {workers}", "--workers")
    if cluster is None:
        cluster = Cluster(1, source="the default, with no cluster file: --cluster FILE, --workers N")
    if workers is not None:
        cluster = replace(cluster, workers=workers)
    efficiency = GPU_EFFICIENCY if efficiency is None else efficiency
    card = GPUS[gpu]
    est = estimate_gpu(specs, card, cluster, gpus, cpus, efficiency)
    est.update(gpu_source=why, cluster_source=cluster.source)
    if not est["total_flops"]:
        return est, []
    worker = f"{cluster.gpus_per_worker:g} GPU" + ("" if cluster.cpus_per_worker is None
                                                   else f" and {cluster.cpus_per_worker:g} CPU")
    at_once = est["trials_per_worker"]
    source = "--workers" if workers is not None else cluster.source
    if est["fits"]:
        wall = (f", about {human(est['wall_seconds'])} of wall time on {cluster.workers} "
                f"worker{'s' * (cluster.workers != 1)}")
        fit = (f"so {at_once} trial{'s' * (at_once != 1)} at a time on each (a trial asks for {gpus:g} GPU and "
               f"{cpus:g} CPU; trials on a worker share its GPUs)")
    else:
        wall = "; no wall time: the trials do not fit on these workers"
        fit = f"too small: {est['problem'].replace(f' (workers from {cluster.source})', '')}; `run` would wait forever"
    lines = [
        f"estimated cost of the remaining trials: {est['total_flops']:.3g} FLOPs: about {est['gpu_hours']:.4g} "
        f"GPU-hours{wall}",
        f"  card: {card.name}, from {why} (--gpu NAME for another: {GPUS.choices()})",
        f"  workers: {cluster.workers}, from {source}; {worker} each, {fit}",
    ]
    for precision, r in est["rates"].items():
        lines.append(f"  {precision} trials: {r['rate']}, {r['stated_flops_per_second'] / 1e12:.4g} TFLOP/s stated "
                     f"x {efficiency:g} efficiency (assumed; --efficiency) = {r['flops_per_second'] / 1e12:.3g} "
                     f"TFLOP/s per trial with a card to itself")
    if narrow(specs):  # measured on an H200 (BENCHMARKS.md, "The GPU path on an H200")
        lines.append(f"  a floor for networks narrower than {NARROW} channels: on an H200, the 63 width-8 ResNets of "
                     "`depth_vs_width --scale cpu` (bf16, 16 trials sharing the card) took 312 s where this "
                     "estimate says about 4 s: kernel launches, not arithmetic, bound them")
    return est, lines


def _describe_cpu(specs, cpus: float, time_steps: bool) -> tuple[dict, list[str]]:
    """`describe` for CPU trials."""
    est = estimate(specs, cpus, time_steps)
    if not est["total_flops"]:
        return est, []
    if est["timed_trials"]:
        return est, [f"estimated cost of the remaining trials: {est['total_flops']:.3g} FLOPs, about "
                     f"{human(est['total_trial_seconds'])} of trial time, from real training steps of each "
                     f"network timed here ({cpus:g} CPU a trial); spread over N parallel trials, about 1/N of that"]
    return est, [
        f"estimated cost of the remaining trials: {est['total_flops']:.3g} FLOPs, about "
        f"{human(est['total_trial_seconds'])} of trial time at "
        + ", ".join(f"{r / 1e9:.0f} GFLOP/s for {p}" for p, r in est["rates"].items())
        + f" per trial ({cpus:g} CPU, measured here); spread over N parallel trials, about 1/N of that"] + (
        [f"  a floor for networks narrower than {NARROW} channels: width-8 ResNets took 3.5-7x this estimate "
         "on 2 CPU cores (memory-bound small convolutions; --time-steps times real steps instead)"]
        if narrow(specs) else [])


def narrow(specs) -> bool:
    """Whether some trial's network is narrower than NARROW channels, where the FLOP rate is a floor."""
    return any(0 < (getattr(s, "width", 0) or 0) < NARROW for s in specs)
