"""Experiment `train`: Frankle et al.'s sweep, training a network's chosen subset with SGD.

    spec.py       TrainSpec: the axes and the recipe (no torch)
    model.py      the spec's network (a model family, sweeper.models) and its parameter counts
    subsets.py    trainable-subset registry: what SGD may move
    loop.py       run_trial(spec) -> TrialResult: the training loop
    callbacks.py  what hangs on the loop: the measurements, one callback signature
    measures.py   measurement registry: bn, clamp, dead_relu tables
    cost.py       trial_cost(spec): a trial's FLOPs, for `sweeper plan`'s estimate
"""
from __future__ import annotations

from sweeper.experiment import Experiment
from sweeper.experiments.train.spec import TrainSpec

ROW_COLUMNS: dict[str, type] = {
    "model": str,
    "test_acc": float,
    "test_top5": float,
    "test_loss": float,
    "train_acc": float,
    "train_loss": float,
    "total_params": int,
    "bn_params": int,
    "output_params": int,
    "shortcut_params": int,
    "trainable_params": int,
    "train_seconds": float,
    "resumed_from_epoch": int,
    "device": str,
}

EXPERIMENT = Experiment(
    name="train",
    spec_type=TrainSpec,
    run_function="sweeper.experiments.train.loop:run_trial",
    columns=ROW_COLUMNS,
    metric="test_acc",
    mode="max",
    figure_modules=("sweeper.analysis.frankle", "sweeper.analysis.norms"),
    description="train a network's chosen subset with SGD and measure it (Frankle et al.)",
    cost="sweeper.experiments.train.cost:trial_cost",
    timing="sweeper.experiments.train.timing:trial_seconds",
)
