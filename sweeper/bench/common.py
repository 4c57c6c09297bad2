"""What every measurement shares: the machine's description, torch's thread count for a
measurement, interleaved timing, and where CIFAR-10 is."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

# the checkout's parent: ../shared/data/cifar10 beside it holds the CIFAR-10 of this machine
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[3]


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
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": metadata.version("ray"),  # without importing Ray (sweeper.orchestration does)
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


def time_interleaved(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2,
                     fewer: dict[str, int] | None = None) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin so that a change
    in machine load hits every variant alike. A step named in `fewer` (one many times slower than
    the rest) runs that many times, spread evenly over the rounds, after one warm-up call."""
    rounds = {name: set(range(repeats)) for name in steps}
    for name, count in (fewer or {}).items():
        if name in steps and count < repeats:
            rounds[name] = {round(j * repeats / count) for j in range(count)}
    for name, fn in steps.items():
        for _ in range(warmup if len(rounds[name]) == repeats else min(warmup, 1)):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(repeats):
        for name, fn in steps.items():
            if i in rounds[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def resolve_cifar_root(data_root: str | None = None) -> Path | None:
    """A folder holding cifar-10-batches-py: the argument, $SWEEPER_DATA_ROOT, or ../shared/data/cifar10
    beside this checkout; None when none has it."""
    from sweeper.checks import user_path
    from sweeper.data import CIFAR10, find_cifar

    candidates = [("--data-root", data_root), ("SWEEPER_DATA_ROOT", os.environ.get("SWEEPER_DATA_ROOT")),
                  ("beside the checkout", _BESIDE_CHECKOUT / "shared" / "data" / "cifar10")]
    for where, c in candidates:
        if c and find_cifar(path := user_path(c, where), CIFAR10):
            return path.resolve()
    return None
