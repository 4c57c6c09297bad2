"""`run_trial`: build the spec's network, train the chosen subset, evaluate, measure.

No Ray here: the same call runs in a test, a notebook or a Ray worker. The runner hooks in through
`on_epoch` (progress and checkpoints) and `resume` (a checkpoint's state).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sweeper.experiments.train import subsets
from sweeper.data import DATASETS, Batches, balanced_subset, channel_stats, load_arrays, require_root
from sweeper.experiments.train.measures import MEASUREMENTS, Context, norm_layers, snapshot_norms
from sweeper.nn.init import initialise
from sweeper.experiments.train.model import build_model, count_groups
from sweeper.experiments.train.spec import TrainSpec
from sweeper.trial import TrialResult

OnEpoch = Callable[[int, dict[str, float], Callable[[], dict[str, Any]]], None]


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite: recorded as a failed trial, never retried as a fault."""


def _autocast(spec: TrainSpec, device: torch.device):
    if spec.precision == "bf16":
        # bf16 autocast keeps batch norm in fp32 (autocast's own op lists).
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Data order and augmentation depend on (seed, epoch) alone, so a trial resumed from a
    # checkpoint at epoch e sees exactly the batches an uninterrupted run would have.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, spec: TrainSpec, device: torch.device) -> dict[str, float]:
    model.eval()
    loss = top1 = top5 = 0.0
    for x, y in batches.ordered():
        with _autocast(spec, device):
            logits = model(x)
        logits = logits.float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(1).sum().item()
    n = len(batches)
    return {"test_loss": loss / n, "test_acc": top1 / n, "test_top5": top5 / n}


@torch.no_grad()
def calibrate_norm_statistics(model: nn.Module, batches: Batches) -> None:
    """For a network that never trains (`none`): running statistics as the exact average over the
    training set, so eval mode normalises with real statistics rather than the (0, 1) defaults."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for x, _ in batches.ordered():
        model(x)
    for m in bns:
        m.momentum = 0.1


def prepare_data(spec: TrainSpec, data_root, device: torch.device, channels_last: bool, workers: int = 0):
    dataset = DATASETS[spec.dataset]
    if dataset.stream is not None:  # too big for memory: decoded per batch by `workers` processes
        root = require_root(spec.dataset, data_root)
        return dataset.stream(spec, root, device, channels_last and spec.family != "mlp", workers)
    x_tr, y_tr, x_te, y_te = load_arrays(spec.dataset, data_root)
    tr, te = balanced_subset(y_tr, spec.train_size), balanced_subset(y_te, spec.test_size)
    x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    mean, std = channel_stats(x_tr)
    cl = channels_last and spec.family != "mlp"
    train = Batches(x_tr, y_tr, spec.batch_size, mean, std, device, cl, spec.augment)
    test = Batches(x_te, y_te, max(spec.batch_size, 512), mean, std, device, cl)
    return train, test


def build_optimizer(model: nn.Module, spec: TrainSpec, selection: subsets.Selection):
    masks = subsets.masks(selection, model)
    full = [p for p in model.parameters() if p.requires_grad and p not in masks]
    groups = [{"params": full, "weight_decay": spec.weight_decay}]
    if masks:  # weight decay for masked tensors is added by hand, before masking
        groups.append({"params": list(masks), "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if not groups:
        return None, masks
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum), masks


def run_trial(
    spec: TrainSpec,
    data_root: str | None = None,
    *,
    device: str | torch.device | None = None,
    threads: int | None = None,
    channels_last: bool = True,
    on_epoch: OnEpoch | None = None,
    resume: dict[str, Any] | None = None,
) -> TrialResult:
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # a streamed dataset decodes in all but one of the trial's CPUs (none: in this process)
    train, test = prepare_data(spec, data_root, device, channels_last, workers=max(0, (threads or 1) - 1))

    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, spec.seed)
    initial = snapshot_norms(model)
    selection = subsets.apply(model, spec.trainable, spec.random_k, spec.seed)
    model = model.to(device)
    if channels_last and spec.family != "mlp":
        model = model.to(memory_format=torch.channels_last)
    optimizer, masks = build_optimizer(model, spec, selection)
    # Compiled after the subset set requires_grad (a graph traced with other flags would be
    # wrong, so they are never toggled afterwards). `model` stays the plain module: state_dict,
    # checkpoints and the measurements' hooks see it; only the steps run the compiled one.
    step_model = model if spec.compile == "none" else torch.compile(model, backend=spec.compile)
    milestones = sorted({max(1, round(m * spec.epochs)) for m in spec.milestones})
    scheduler = (
        torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=spec.lr_drop) if optimizer else None
    )

    curves: list[dict[str, float]] = []
    first_epoch = 0
    if resume:
        model.load_state_dict(resume["model"])
        if optimizer:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        curves = list(resume["curves"])
        first_epoch = int(resume["epoch"])

    def state() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else {},
            "scheduler": scheduler.state_dict() if scheduler else {},
            "curves": curves,
            "epoch": len(curves),
        }

    for epoch in range(first_epoch, spec.epochs):
        t0 = time.perf_counter()
        model.train()
        g = _epoch_generator(spec.seed, epoch)
        seen = correct = 0
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device, dtype=torch.long)
        for step, (x, y) in enumerate(train.epoch(g)):
            with _autocast(spec, device), torch.set_grad_enabled(optimizer is not None):
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), y)
            if optimizer:  # None when the subset selects nothing (e.g. `bn` with norm `none`)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                subsets.mask_gradients(masks, spec.weight_decay)
                optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct_sum += (logits.argmax(1) == y).sum()
            seen += len(y)
        train_loss = loss_sum.item() / max(seen, 1)  # one sync per epoch, not per step
        if not math.isfinite(train_loss):
            raise TrialDiverged(f"training loss became {train_loss} in epoch {epoch + 1}")
        correct = correct_sum.item()
        lr = optimizer.param_groups[0]["lr"] if optimizer else 0.0
        if scheduler:
            scheduler.step()
        metrics = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": correct / max(seen, 1),
            **evaluate(step_model, test, spec, device),
            "epoch_seconds": time.perf_counter() - t0,
        }
        curves.append(metrics)
        if on_epoch:
            on_epoch(epoch + 1, metrics, state)

    if spec.epochs == 0:
        calibrate_norm_statistics(model, train)
    final = evaluate(step_model, test, spec, device)
    train_seconds = time.perf_counter() - started

    ctx = Context(
        model=model,
        spec=spec,
        evaluate=lambda: evaluate(model, test, spec, device),
        test_batches=test.ordered,
        initial=initial,
    )
    tables = {}
    import pandas as pd

    if curves:
        tables["curves"] = pd.DataFrame(curves)
    for name in spec.measure:
        tables.update(MEASUREMENTS[name](ctx))

    groups = count_groups(model)
    row = {
        "model": spec.model,
        **final,
        "train_acc": curves[-1]["train_acc"] if curves else float("nan"),
        "train_loss": curves[-1]["train_loss"] if curves else float("nan"),
        "total_params": groups["total"],
        "bn_params": groups["batchnorm"],
        "output_params": groups["output"],
        "shortcut_params": groups["shortcut"],
        "trainable_params": subsets.count(selection, model),
        "train_seconds": train_seconds,
        "resumed_from_epoch": first_epoch,  # > 0 when a lost node's trial resumed from a checkpoint
        "device": str(device),
    }
    return TrialResult(row, tables)
