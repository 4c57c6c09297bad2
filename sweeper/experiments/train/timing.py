"""Seconds one training trial takes on this machine's CPU, from real steps of its network
(`sweeper plan --time-steps`).

Why: `cost.py` counts a trial's FLOPs and `sweeper plan` divides them by a share (0.8) of a core's
matrix-multiply rate. Networks of base width 8 reach a fifth of that rate or less (their
convolutions are small and memory-bound): their trials took 3.5-7x the FLOP estimate on 2 cores
(docs/laptop_scale.md). Here each distinct network of a plan is built as `run_trial` builds it
(initialisation, trainable subset, channels_last, optimizer) and its training step (`train_step`
itself) and evaluation forward pass are timed on a synthetic batch of the trial's size, precision
and threads; a trial is its steps and test passes, as `cost.trial_cost` counts them. Data loading
and augmentation are not timed (BENCHMARKS.md: a few percent of a CPU step).
"""
from __future__ import annotations

import contextlib
import time

import torch

from sweeper import seeds
from sweeper.bench.common import torch_threads
from sweeper.data import DATASETS
from sweeper.experiments.train import subsets
from sweeper.experiments.train.cost import SIZES
from sweeper.experiments.train.loop import autocast, build_optimizer, train_step
from sweeper.experiments.train.model import build_model
from sweeper.experiments.train.onednn import avoiding_onednn_bug
from sweeper.experiments.train.spec import TrainSpec
from sweeper.models import FAMILIES
from sweeper.nn.init import initialise

REPEATS = 3  # timed steps after one warm-up: the median of three


def network(spec: TrainSpec) -> tuple:
    """What a trial's step time depends on (not its seed, learning rate or epochs)."""
    return (spec.model, spec.family, spec.depth, spec.width, spec.dataset, spec.activation, spec.norm,
            spec.trainable, spec.random_k, spec.precision, spec.batch_size)


def _median(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def trial_network(spec: TrainSpec, device: torch.device):
    """(model, training step) of `spec` as `run_trial` builds them: initialised from the spec's
    seed (the same weights on every call), its subset trainable, channels_last when convolutional."""
    model = build_model(spec)
    initialise(model, spec.weight_init, spec.bn_init, seeds.init(spec.seed))
    selection = subsets.apply(model, spec.trainable, spec.random_k, spec.seed)
    if FAMILIES[spec.family].convolutional:
        model = model.to(memory_format=torch.channels_last)
    optimizer, masks = build_optimizer(model, spec, selection)
    return model, train_step(model, optimizer, masks, spec, device)


def step_seconds(spec: TrainSpec, threads: int = 1) -> tuple[float, float]:
    """(seconds of one training step at the trial's batch size, seconds of one evaluation forward
    pass at its test batch size) of `spec`'s network on this CPU with `threads` threads."""
    device = torch.device("cpu")
    shape, classes = DATASETS[spec.dataset].shape, DATASETS[spec.dataset].num_classes
    convolutional = FAMILIES[spec.family].convolutional
    with torch_threads(threads), contextlib.ExitStack() as scope:
        model, step = trial_network(spec, device)
        scope.enter_context(avoiding_onednn_bug(model, device))  # as run_trial trains it

        def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n, *shape, generator=g)
            return (x.contiguous(memory_format=torch.channels_last) if convolutional else x,
                    torch.randint(0, classes, (n,), generator=g))

        x, y = batch(spec.batch_size)
        model.train()
        train = _median(lambda: step(x, y))
        x, _ = batch(max(spec.batch_size, 512))  # evaluate's batch size (loop.prepare_data)
        model.eval()

        def forward():
            with torch.no_grad(), autocast(spec, device):
                model(x)

        return train, _median(forward)


def trial_seconds(specs, threads: int = 1) -> list[float]:
    """Seconds each trial of `specs` takes here: `epochs` passes of training steps and the trial's
    test passes (as cost.trial_cost counts them), from one timing per network."""
    timed: dict[tuple, tuple[float, float]] = {}
    out = []
    for spec in specs:
        key = network(spec)
        if key not in timed:
            timed[key] = step_seconds(spec, threads)
        train_s, eval_s = timed[key]
        train, test = SIZES[spec.dataset]
        train = min(spec.train_size, train) if spec.train_size else train
        test = min(spec.test_size, test) if spec.test_size else test
        steps = train // spec.batch_size  # a last partial batch is dropped (Batches)
        batches = -(-test // max(spec.batch_size, 512))
        out.append(spec.epochs * steps * train_s + spec.test_passes * batches * eval_s)
    return out
