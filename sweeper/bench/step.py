"""The training step's speed: the step every trial runs (`sweeper.experiments.train.loop.train_step`,
its autocast included) on the sweep's BN-only network, against a plain PyTorch loop and variants
that show where the speed comes from (bf16 autocast, the frozen-conv weight-gradient skip)."""
from __future__ import annotations

from typing import Any, Callable

from sweeper.bench.common import time_interleaved, torch_threads
from sweeper.bench.flops import count_flops, profile_step


def bn_only_model(depth: int = 14, width: int = 16, dataset: str = "cifar10", frozen: bool = True,
                  channels_last: bool = True, precision: str = "fp32"):
    """The sweep's BN-only CIFAR ResNet exactly as `run_trial` builds it (same init and seed,
    `subsets.apply` sets requires_grad False on everything but γ, β; channels_last), its optimizer
    from `build_optimizer`, and its spec (`precision` bf16: the step runs under bf16 autocast).
    frozen=False keeps requires_grad True on the frozen weights (their gradients are computed,
    then not applied: the masked alternative)."""
    import torch

    from sweeper import seeds
    from sweeper.experiments.train import subsets
    from sweeper.experiments.train.loop import build_optimizer
    from sweeper.experiments.train.model import build_model
    from sweeper.nn.init import initialise

    spec = _spec(depth, width, dataset, precision)
    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, seeds.init(spec.seed))
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

    from sweeper import seeds
    from sweeper.experiments.train import subsets
    from sweeper.experiments.train.model import build_model
    from sweeper.nn.init import initialise

    spec = _spec(depth, width, dataset, "fp32")
    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, seeds.init(spec.seed))
    names = set(subsets.norm_params(model))
    bn = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.SGD(bn, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return model, optimizer


def _spec(depth: int, width: int, dataset: str, precision: str):
    from sweeper.experiments.train.spec import TrainSpec

    return TrainSpec.from_values({"model": f"resnet-{depth}", "width": width, "trainable": "bn", "dataset": dataset,
                                  "precision": precision})


def our_step(model, optimizer, masks, spec) -> Callable:
    """The training step every trial runs, on the CPU: `train_step` itself, not a copy."""
    import torch

    from sweeper.experiments.train.loop import train_step

    return train_step(model, optimizer, masks, spec, torch.device("cpu"))


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
      ours       the trials' step (`train_step`): channels_last, frozen weights requires_grad False, fp32
      ours_bf16  the same under bf16 autocast (the loop's `autocast`, precision bf16)
      masked     channels_last, fp32, frozen weights requires_grad True (weight gradients computed)
      reference  plain PyTorch: NCHW, fp32, every requires_grad True, optimizer holds γ, β only
      full       every parameter trained (channels_last, fp32), for scale
      compiled   ours under torch.compile (inductor; the recipe's `compile` field): opt-in, its
                 first calls compile for about a minute on a CPU
    Each runs on its own copy of the same initial network and the same batch; on a CPU without
    native bf16, ours_bf16 runs `repeats // 5` times (at least 3; `repeats_bf16`). With `sgemm_n`,
    an n x n fp32 matmul joins the round-robin, so `sgemm_fraction` compares rates measured
    under the same load."""
    import torch

    from sweeper.experiments.train.onednn import avoiding_onednn_bug
    from sweeper.preflight import native_cpu_bf16

    variants = variants or ("ours", "ours_bf16", "masked", "reference", "full")
    steps: dict[str, Callable] = {}
    models = []
    flops: dict[str, int] = {}
    with torch_threads(threads):
        x_nchw, y = cifar_batch(batch)
        x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
        for name in variants:
            if name in ("ours", "ours_bf16", "masked", "compiled"):
                model, opt, masks, spec = bn_only_model(depth, width, frozen=name != "masked",
                                                        precision="bf16" if name == "ours_bf16" else "fp32")
                if name == "compiled":
                    model = torch.compile(model, backend="inductor")
                models.append(model)
                step = our_step(model, opt, masks, spec)
                steps[name] = (lambda s: lambda: s(x_cl, y))(step)
            elif name == "reference":
                model, opt = reference_model(depth, width)
                models.append(model)
                step = reference_step(model, opt)
                steps[name] = (lambda s: lambda: s(x_nchw, y))(step)
            elif name == "full":
                model, opt, masks, spec = bn_only_model(depth, width, frozen=False)
                opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                      weight_decay=spec.weight_decay)
                models.append(model)
                step = our_step(model, opt, {}, spec)
                steps[name] = (lambda s: lambda: s(x_cl, y))(step)
            else:
                raise ValueError(f"unknown step variant {name!r}")
        # Where one variant would hit PyTorch's oneDNN crash (width 4 without AVX-512: the reference
        # trains its shortcuts), all run without oneDNN, so that they stay comparable.
        with avoiding_onednn_bug(models, torch.device("cpu")) as without_onednn:
            for name in ("ours", "reference", "compiled"):
                if name in steps:
                    flops[name] = count_flops(steps[name])
            shares = profile_step(steps["ours"]) if profile and "ours" in steps else None
            if sgemm_n:
                g = torch.Generator().manual_seed(0)
                a, b = torch.randn(sgemm_n, sgemm_n, generator=g), torch.randn(sgemm_n, sgemm_n, generator=g)
                c = torch.empty(sgemm_n, sgemm_n)
                steps["sgemm"] = lambda: torch.mm(a, b, out=c)
            # Without native bf16 (AVX2) the bf16 step takes about 10x the others: a few calls tell that.
            fewer = {} if native_cpu_bf16() else {"ours_bf16": max(3, repeats // 5)}
            seconds = time_interleaved(steps, repeats, warmup, fewer)
    out: dict[str, Any] = {"model": f"resnet-{depth}" + (f" width {width}" if width != 16 else ""),
                           "batch": batch, "threads": threads, "repeats": repeats,
                           **({"repeats_bf16": fewer["ours_bf16"]} if "ours_bf16" in steps and fewer else {}),
                           "seconds": {k: round(v, 5) for k, v in seconds.items()},
                           "flops": flops, "onednn": not without_onednn}
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
