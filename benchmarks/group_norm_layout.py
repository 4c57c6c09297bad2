"""Group norms on the CPU: torch's nn.GroupNorm on channels_last feature maps against sweeper's
GroupNorm (sweeper/nn/norms.py, which runs the same op on NCHW memory), side by side in one process.

    .venv/bin/python benchmarks/group_norm_layout.py [--repeats 15] [--depth 20] [--width 8]

For each group-norm layer of the norm_types study (layer, group(groups=4), instance) it builds the
trials' BN-only network of `norm_types --scale cpu` twice with the same weights
(`timing.trial_network`, as run_trial builds it), once with every norm module switched back to
torch's class, and times (interleaved round robin, one thread, the median) the training step at
batch 128 (`train_step` itself, bf16 autocast, channels_last) and the evaluation forward pass at
batch 512. It also checks that both give the same logits. One JSON object.
"""
import argparse
import json
import time

import torch
from torch import nn

from sweeper.bench.common import time_interleaved, torch_threads
from sweeper.experiments.train.loop import autocast
from sweeper.experiments.train.spec import TrainSpec
from sweeper.experiments.train.timing import trial_network

p = argparse.ArgumentParser()
p.add_argument("--repeats", type=int, default=15)
p.add_argument("--depth", type=int, default=20)
p.add_argument("--width", type=int, default=8)
a = p.parse_args()

t0 = time.perf_counter()
cpu = torch.device("cpu")
g = torch.Generator().manual_seed(0)
x_train = torch.randn(128, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
y_train = torch.randint(0, 10, (128,), generator=g)
x_test = torch.randn(512, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
out = {"depth": a.depth, "width": a.width, "repeats": a.repeats, "threads": 1, "precision": "bf16", "norms": {}}


def as_torch(model: nn.Module) -> nn.Module:
    """The network with every group norm switched back to torch's own class (same weights)."""
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.__class__ = nn.GroupNorm
    return model


with torch_threads(1):
    for norm in ("layer", "group(groups=4)", "instance"):
        spec = TrainSpec(dataset="cifar10", family="resnet", depth=a.depth, width=a.width, norm=norm,
                         trainable="bn", precision="bf16", batch_size=128, seed=0).resolve()
        steps, forwards = {}, {}
        for name in ("torch", "sweeper"):
            model, step = trial_network(spec, cpu)  # the same weights each time (the spec's seed)
            if name == "torch":
                as_torch(model)
            steps[name] = lambda s=step, m=model: (m.train(), s(x_train, y_train))

            def forward(m=model):
                m.eval()
                with torch.no_grad(), autocast(spec, cpu):
                    return m(x_test)

            forwards[name] = forward
        same = torch.allclose(forwards["torch"]().float(), forwards["sweeper"]().float(), atol=1e-2, rtol=1e-2)
        step_s = time_interleaved(steps, a.repeats)
        eval_s = time_interleaved(forwards, a.repeats)
        out["norms"][norm] = {
            "train_step_s": {k: round(v, 4) for k, v in step_s.items()},
            "eval_pass_s": {k: round(v, 4) for k, v in eval_s.items()},
            "step_speedup": round(step_s["torch"] / step_s["sweeper"], 2),
            "eval_speedup": round(eval_s["torch"] / eval_s["sweeper"], 2),
            "same_logits": bool(same),
        }
        print(norm, out["norms"][norm], flush=True)
out["wall_s"] = round(time.perf_counter() - t0, 1)
print(json.dumps(out, indent=1))
