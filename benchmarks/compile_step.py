"""torch.compile (inductor) against sweeper's eager step, side by side in one process.

    .venv/bin/python benchmarks/compile_step.py [--repeats 25] [--depth 14] [--width 16]

Interleaved round robin (sweeper.bench.common.time_interleaved) of the BN-only ResNet step: `ours`
(eager, channels_last, frozen weights), `compiled` (the same under torch.compile, inductor,
compiled during the warm-up calls) and the plain PyTorch `reference`; one thread; plus a 2048^2
fp32 matmul for the FLOP-rate fraction. Prints one JSON object.
"""
import argparse
import json
import time

from sweeper.bench.step import measure_step

p = argparse.ArgumentParser()
p.add_argument("--repeats", type=int, default=25)
p.add_argument("--depth", type=int, default=14)
p.add_argument("--width", type=int, default=16)
a = p.parse_args()
t0 = time.perf_counter()
out = measure_step(a.depth, a.width, repeats=a.repeats, warmup=3, variants=("ours", "compiled", "reference"),
                   sgemm_n=2048)
flops = out["flops"]
for name in ("compiled",):
    if name in flops:
        out[f"{name}_gflops_per_s"] = round(flops[name] / out["seconds"][name] / 1e9, 3)
        out[f"{name}_sgemm_fraction"] = round(out[f"{name}_gflops_per_s"] / out["sgemm_gflops_per_s"], 4)
out["wall_s"] = round(time.perf_counter() - t0, 1)
print(json.dumps(out, indent=1))
