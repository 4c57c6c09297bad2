"""Measurement registry: what a trial records after training, each into its own table.

A study lists the names under `measure`; accuracy and per-epoch curves are always recorded.
  bn        every γ and β per channel, with its layer and the initial values  -> table `bn`
  clamp     zero every γ with |γ| < t, re-evaluate, for each threshold t      -> table `clamp`
  dead_relu fraction of activation units that output exactly 0 on > 99% of test inputs,
            per spatial unit and per channel, per layer                       -> table `dead_relu`
γ sparsity (fraction of |γ| below thresholds) is derived in analysis from `bn`.

A measurement is one function `(Context) -> {table: DataFrame}` registered here; the training loop
runs the study's measurements at the end of training as callbacks (`callbacks.py`). Which layers
are norms, and the stage and block of each, the model declares (sweeper.models.roles).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import nn

from sweeper.models.roles import norm_layers, position
from sweeper.nn.activations import ACTIVATIONS
from sweeper.registry import Registry

DEAD_FRACTION = 0.99  # "dead": exactly zero on more than 99% of test inputs (Frankle et al.)


@dataclass
class Context:
    model: nn.Module
    spec: object
    evaluate: Callable[[], dict[str, float]]  # test-set metrics of the model as it is now
    test_batches: Callable[[], object]  # iterable of (x, y) test batches
    initial: dict[str, tuple[torch.Tensor, torch.Tensor]]  # norm layer -> (γ0, β0)


MEASUREMENTS: Registry[Callable[[Context], dict[str, pd.DataFrame]]] = Registry("measurement")


def snapshot_norms(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (m.weight.detach().cpu().clone(), m.bias.detach().cpu().clone()) for n, m in norm_layers(model)}


@MEASUREMENTS.register("bn", "gamma_beta")
def measure_bn(ctx: Context) -> dict[str, pd.DataFrame]:
    frames = []
    for index, (layer, module) in enumerate(norm_layers(ctx.model)):
        gamma = module.weight.detach().float().cpu()
        beta = module.bias.detach().float().cpu()
        g0, b0 = ctx.initial[layer]
        stage, block, role = position(ctx.model, layer)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "layer_index": index,
                    "stage": stage,
                    "block": block,
                    "role": role,
                    "norm": ctx.spec.norm,
                    "channel": range(len(gamma)),
                    "gamma": gamma.numpy().astype("float64"),
                    "beta": beta.numpy().astype("float64"),
                    "gamma_init": g0.float().numpy().astype("float64"),
                    "beta_init": b0.float().numpy().astype("float64"),
                }
            )
        )
    return {"bn": pd.concat(frames, ignore_index=True)} if frames else {}


@MEASUREMENTS.register("clamp")
@torch.no_grad()
def measure_clamp(ctx: Context) -> dict[str, pd.DataFrame]:
    layers = [m for _, m in norm_layers(ctx.model)]
    if not layers:
        return {}
    saved = [m.weight.detach().clone() for m in layers]
    total = sum(w.numel() for w in saved)
    rows = []
    for t in ctx.spec.clamp_thresholds:
        clamped = 0
        for m, w in zip(layers, saved):
            small = w.abs() < t
            clamped += int(small.sum())
            m.weight.copy_(torch.where(small, torch.zeros_like(w), w))
        metrics = ctx.evaluate()
        rows.append(
            {"threshold": float(t), "fraction_clamped": clamped / total, "clamped": clamped,
             "test_acc": metrics["test_acc"], "test_top5": metrics["test_top5"]}
        )
    for m, w in zip(layers, saved):
        m.weight.copy_(w)
    return {"clamp": pd.DataFrame(rows)}


def activation_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = tuple({type(ACTIVATIONS[name].build()) for name in ACTIVATIONS} - {nn.Identity})
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


@MEASUREMENTS.register("dead_relu", "dead_units")
@torch.no_grad()
def measure_dead(ctx: Context) -> dict[str, pd.DataFrame]:
    """Per activation call site: torchvision's ImageNet blocks call one ReLU module two (BasicBlock)
    or three (Bottleneck) times per forward pass, on different units each time; counting per
    module summed those calls (doubled counts, or tensors of different shapes). A module called
    more than once records one row per call, `layer` named `<module>#<call>` (1-based)."""
    layers = activation_layers(ctx.model)
    order = {name: i for i, (name, _) in enumerate(layers)}
    kinds = {name: type(module).__name__ for name, module in layers}
    zeros: dict[tuple[str, int], torch.Tensor] = {}  # per unit: how many inputs gave exactly 0
    channel_zeros: dict[tuple[str, int], torch.Tensor] = {}  # per channel: inputs where the whole map was 0
    calls: dict[str, int] = {}  # module -> its calls so far in this forward pass
    count = 0

    def hook(name):
        def fn(module, inputs, out):
            site = (name, calls.get(name, 0))
            calls[name] = site[1] + 1
            z = (out == 0).reshape(out.shape[0], out.shape[1], -1)
            zeros[site] = zeros.get(site, 0) + z.sum(0)
            channel_zeros[site] = channel_zeros.get(site, 0) + z.all(-1).sum(0)

        return fn

    ctx.model.eval()
    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    try:
        for x, _ in ctx.test_batches():
            calls.clear()
            ctx.model(x)
            count += len(x)
    finally:
        for h in handles:
            h.remove()
    sites_of: dict[str, int] = {}
    for name, call in zeros:
        sites_of[name] = max(sites_of.get(name, 0), call + 1)
    rows = []
    # in the modules' order, a module's call sites in call order (modules never called: no row)
    for index, (name, call) in enumerate(sorted(zeros, key=lambda site: (order[site[0]], site[1]))):
        unit = zeros[name, call].float() / count
        chan = channel_zeros[name, call].float() / count
        rows.append(
            {"layer": name if sites_of[name] == 1 else f"{name}#{call + 1}", "layer_index": index,
             "activation": kinds[name], "units": unit.numel(), "channels": chan.numel(),
             "dead_unit_fraction": float((unit > DEAD_FRACTION).float().mean()),
             "dead_channel_fraction": float((chan > DEAD_FRACTION).float().mean()),
             "mean_zero_fraction": float(unit.mean())}
        )
    return {"dead_relu": pd.DataFrame(rows)}
