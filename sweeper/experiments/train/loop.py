"""`run_trial`: build the spec's network, train the chosen subset, evaluate; everything else hangs
on the loop as callbacks (`callbacks.py`: the measurements; the runner's: progress, checkpoints).

No Ray here: the same call runs in a test, a notebook or a Ray worker. `resume` takes back the
state a callback saw as `progress.state()` (a checkpoint).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sweeper import seeds
from sweeper.data import DATASETS, Batches, balanced_subset, channel_stats, load_arrays, require_root
from sweeper.experiment import Callback, Progress, TrialResult
from sweeper.experiments.train import subsets
from sweeper.experiments.train.callbacks import standard_callbacks
from sweeper.experiments.train.measures import Context, snapshot_norms
from sweeper.experiments.train.model import build_model
from sweeper.experiments.train.onednn import avoiding_onednn_bug
from sweeper.experiments.train.spec import TrainSpec
from sweeper.models import FAMILIES
from sweeper.models.params import count_groups
from sweeper.nn.init import initialise
from sweeper.nn.norms import recalibrate


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite: recorded as a failed trial, never retried as a fault."""


class NothingTrained(RuntimeError):
    """An epoch formed no batch (batch_size above the training examples; batches drop the last
    partial one): a trial that did no work is failed, never done."""


def autocast(spec: TrainSpec, device: torch.device):
    if spec.precision == "bf16":
        # bf16 autocast keeps batch norm in fp32 (autocast's own op lists).
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Data order and augmentation of one epoch (seeds.epoch: a resumed trial sees the same batches)."""
    return torch.Generator().manual_seed(seeds.epoch(seed, epoch))


def train_step(model: nn.Module, optimizer, masks, spec: TrainSpec, device: torch.device
               ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One training step, (x, y) -> (logits, loss), exactly as every trial runs it. Without an
    optimizer (the subset selects nothing, e.g. `bn` with norm `none`) it only runs forward."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(spec, device), torch.set_grad_enabled(optimizer is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        if optimizer:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            subsets.mask_gradients(masks, spec.weight_decay)
            optimizer.step()
        return logits, loss

    return step


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, spec: TrainSpec, device: torch.device) -> dict[str, float]:
    model.eval()
    loss = top1 = top5 = 0.0
    for x, y in batches.ordered():
        with autocast(spec, device):
            logits = model(x)
        logits = logits.float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(1).sum().item()
    n = len(batches)
    return {"test_loss": loss / n, "test_acc": top1 / n, "test_top5": top5 / n}


def prepare_data(spec: TrainSpec, data_root, device: torch.device, channels_last: bool, workers: int = 0):
    dataset = DATASETS[spec.dataset]
    cl = channels_last and FAMILIES[spec.family].convolutional
    if dataset.stream is not None:  # too big for memory: decoded per batch by `workers` processes
        root = require_root(spec.dataset, data_root)
        return dataset.stream(spec, root, device, cl, workers)
    x_tr, y_tr, x_te, y_te = load_arrays(spec.dataset, data_root)
    tr, te = balanced_subset(y_tr, spec.train_size), balanced_subset(y_te, spec.test_size)
    x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    mean, std = channel_stats(x_tr)
    train = Batches(x_tr, y_tr, spec.batch_size, mean, std, device, cl, spec.augment)
    test = Batches(x_te, y_te, max(spec.batch_size, 512), mean, std, device, cl)
    return train, test


def lr_milestones(fractions, epochs: int, steps_per_epoch: int) -> list[int]:
    """The optimizer steps after which lr drops: the first step at or past each fraction of training.

    Per step, not per epoch: open_lth's "drop at 50% and 75%" lands on epochs 80 and 120 of 160
    exactly, and so does this (62,400 steps -> 31,200 and 46,800, epoch boundaries); but a short
    run's fractions fall inside epochs, and rounding them to epochs moved the drops (5 epochs:
    round(2.5) == 2 and round(3.75) == 4, drops at 40% and 80% of training). Rounding up keeps at
    least the asked share of training before each drop; the 1e-9 keeps a float product such as
    (0.1 + 0.2) * 10 = 3.0000000000000004 from rounding up a whole step.
    """
    total = epochs * steps_per_epoch
    return sorted({max(1, math.ceil(m * total - 1e-9)) for m in fractions})


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
    callbacks: Iterable[Callback] = (),
    resume: dict[str, Any] | None = None,
) -> TrialResult:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with contextlib.ExitStack() as scope:  # what the trial changes in torch, undone when it ends
        return _run_trial(spec, data_root, device, threads, channels_last, callbacks, resume, scope)


def _run_trial(spec: TrainSpec, data_root: str | None, device: torch.device, threads: int | None,
               channels_last: bool, callbacks: Iterable[Callback], resume: dict[str, Any] | None,
               scope: contextlib.ExitStack) -> TrialResult:
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    # a streamed dataset decodes in all but one of the trial's CPUs (none: in this process)
    train, test = prepare_data(spec, data_root, device, channels_last, workers=max(0, (threads or 1) - 1))
    callbacks = [*standard_callbacks(spec), *callbacks]

    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, seeds.init(spec.seed))
    initial = snapshot_norms(model)
    selection = subsets.apply(model, spec.trainable, spec.random_k, spec.seed)
    scope.enter_context(avoiding_onednn_bug(model, device))  # a PyTorch bug that crashes a few CPU trials
    model = model.to(device)
    if channels_last and FAMILIES[spec.family].convolutional:
        model = model.to(memory_format=torch.channels_last)
    optimizer, masks = build_optimizer(model, spec, selection)
    # Compiled after the subset set requires_grad (a graph traced with other flags would be
    # wrong, so they are never toggled afterwards). `model` stays the plain module: state_dict,
    # checkpoints and the measurements' hooks see it; only the steps run the compiled one.
    step_model = model if spec.compile == "none" else torch.compile(model, backend=spec.compile)
    step = train_step(step_model, optimizer, masks, spec, device)
    milestones = lr_milestones(spec.milestones, spec.epochs, train.num_batches(drop_last=True))
    scheduler = (  # stepped once per optimizer step: its milestones count steps
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
        seen = 0
        lr = optimizer.param_groups[0]["lr"] if optimizer else 0.0
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device, dtype=torch.long)
        for x, y in train.epoch(epoch_generator(spec.seed, epoch)):
            logits, loss = step(x, y)
            if scheduler:
                scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct_sum += (logits.argmax(1) == y).sum()
            seen += len(y)
        if not seen:
            raise NothingTrained(f"epoch {epoch + 1} formed no batch: batch_size {spec.batch_size} is more than "
                                 f"the {len(train)} training examples")
        train_loss = loss_sum.item() / seen  # one sync per epoch, not per step
        if not math.isfinite(train_loss):
            raise TrialDiverged(f"training loss became {train_loss} in epoch {epoch + 1}")
        correct = correct_sum.item()
        metrics = {
            "epoch": epoch + 1,
            "lr": lr,  # at the epoch's first step (a drop may fall inside the epoch)
            "train_loss": train_loss,
            "train_acc": correct / seen,
            **(evaluate(step_model, test, spec, device) if spec.tests_after(epoch + 1) else {}),
            "epoch_seconds": time.perf_counter() - t0,
        }
        curves.append(metrics)
        for callback in callbacks:
            callback(Progress(epoch=epoch + 1, epochs=spec.epochs, metrics=metrics, state=state))

    if spec.epochs == 0:
        # Never trained (`none`): running statistics as the exact average over the training set, so
        # eval mode normalises with real statistics rather than the (0, 1) defaults.
        recalibrate(model, (x for x, _ in train.ordered()))
    # The last epoch's test pass is the final evaluation (the callbacks between only read the model).
    final = ({k: curves[-1][k] for k in ("test_loss", "test_acc", "test_top5")} if curves
             else evaluate(step_model, test, spec, device))
    train_seconds = time.perf_counter() - started

    context = Context(
        model=model,
        spec=spec,
        evaluate=lambda: evaluate(model, test, spec, device),
        test_batches=test.ordered,
        initial=initial,
    )
    tables = {"curves": pd.DataFrame(curves)} if curves else {}
    end = Progress(epoch=len(curves), epochs=spec.epochs, metrics=final, state=state, end=True, tables=tables,
                   context=context)
    for callback in callbacks:
        callback(end)

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
