"""FLOP rate: the FLOPs a call runs (matmuls and convolutions, counted by torch itself), where a
step's time goes per op class, and the rate of a large fp32 matmul, the practical peak the step's
rate is compared against."""
from __future__ import annotations

from typing import Any, Callable

from sweeper.bench.common import time_interleaved, torch_threads


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
