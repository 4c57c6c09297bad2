"""The spec of a construction trial (Burkholz 2024): the target, the random source and the solver.

Every field is a plain int/float/str/bool with a default; changing a default changes trial ids.
This module imports no torch, so the experiment registry (and analysis) can read the spec type.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from sweeper.checks import SEED, Range, at_least, positive
from sweeper.errors import SweeperError
from sweeper.spec import Spec

#: the block's last BN scale: fixed at 1 / gain (it only undoes the linear-region scaling), or solved
#: with the inner scales (the paper's construction, which uses every γ)
OUTPUT_GAMMAS = ("fixed", "solve")
SOLVERS = ("auto", "dense", "lsqr")
DTYPES = ("float32", "float64")
SGD_OPTIMIZERS = ("adam", "sgd")
SGD_OBJECTIVES = ("distill", "labels")
#: random source weights: the shared weight-distribution registry (sweeper.nn.init) at its default
#: parameters, i.e. kaiming scale (fan-in std sqrt(2 / fan_in)) for normal, uniform, signed_constant
SOURCE_INITS = ("normal", "kaiming_normal", "uniform", "kaiming_uniform", "signed_constant")


@dataclass(frozen=True)
class ConstructionSpec(Spec):
    """One construction trial. Every field is a plain int/float/str/bool with a default."""

    experiment: ClassVar[str] = "construction"
    # Sizes far beyond what a dense or iterative solve on one node handles (the paper's targets are
    # tens of units wide), so that an absurd value is refused, not tried.
    RANGES: ClassVar[dict[str, Range]] = {
        "hidden": Range(1, 65_536, integer=True),
        "hidden_layers": Range(1, 1_000, integer=True),
        "cnn_channels": Range(1, 65_536, integer=True),
        "kernel_size": Range(1, 31, integer=True),
        "width_ratio": Range(0, 1_000, low_open=True),
        "source_depth": Range(1, 1_000, integer=True),
        "seed": SEED,
        "target_epochs": Range(0, 1_000_000, integer=True),
        "target_lr": positive(),
        "batch_size": Range(1, 2**31, high_open=True, integer=True),
        "calibration_size": at_least(0, integer=True),
        "shift_margin": at_least(1),
        "linear_scale": at_least(0),
        "dense_limit": Range(1, 2**40, integer=True),
        "lsqr_iters": Range(1, 10**9, integer=True),
        "lm_iters": Range(0, 10**9, integer=True),
        "tol": positive(),
        "sgd_epochs": Range(0, 1_000_000, integer=True),
        "sgd_lr": positive(),
        "train_size": at_least(0, integer=True),
        "test_size": at_least(0, integer=True),
    }

    target: str = "mlp"  # the target registry (targets.py): mlp | cnn | cifar-cnn
    hidden: int = 16  # MLP hidden width
    hidden_layers: int = 1  # MLP hidden layers
    cnn_channels: int = 8  # CNN: conv(k x k, C -> c), act, maxpool 2, conv(c -> c), act, avgpool, linear
    kernel_size: int = 3
    width_ratio: float = 1.2  # total BN width per target layer / its weight count P (D * m / P)
    source_depth: int = 1  # D: BN layers per target layer (1 = the linear construction)
    activation: str = "relu"  # target and source activation (sweeper.nn.activations)
    weight_init: str = "normal"  # random source weights: normal | uniform | signed_constant (kaiming scale)
    dataset: str = "digits"
    train_size: int = 0  # 0: the whole training set; else a class-balanced subset (target, calibration, SGD)
    test_size: int = 0  # 0: the whole test set; else a class-balanced subset
    seed: int = 0
    target_epochs: int = 30  # Adam epochs for the target (seconds on digits)
    target_lr: float = 0.01
    batch_size: int = 64
    calibration_size: int = 0  # training inputs used for running statistics; 0 = all
    shift_margin: float = 2.0  # ReLU-like: shift = onset + margin * (calibration range of the unit)
    linear_scale: float = 0.0  # tanh/sigmoid: half-width ε of the pre-activation range; 0 = auto per dtype
    solver: str = "auto"  # D = 1: auto | dense | lsqr (auto: dense when P * m <= dense_limit)
    dense_limit: int = 8_000_000  # largest P * m (or Gram size²) handled densely
    lsqr_iters: int = 20_000
    lm_iters: int = 100  # Levenberg-Marquardt iterations (D >= 2)
    tol: float = 1e-13  # relative weight residual at which the solvers stop
    # "solve" (the paper's): the block's last BN scale is an unknown of the scale equations too, so a
    # block is exact from D*m + n_out - D >= P on; "fixed": 1 / gain, exact from D*m - (D-1) >= P on
    output_gamma: str = "fixed"
    refit_output: bool = False  # fit each block's output BN scale by regression (helps below m = P)
    dtype: str = "float32"  # dtype the constructed and target networks are evaluated in
    sgd_epochs: int = 20  # BN-only baseline on the same random source; 0 = untrained (γ=1, β=0)
    sgd_lr: float = 0.01
    sgd_optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    sgd_objective: str = "distill"  # distill (MSE to target logits) | labels (cross-entropy)

    def __post_init__(self) -> None:
        def bad(field: str, message: str) -> None:
            raise SweeperError(message, field)

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}[f.type]
            if not isinstance(v, want) or (f.type != "bool" and isinstance(v, bool)):
                bad(f.name, f"expected {f.type}, got {v!r}")
        choices = {"output_gamma": OUTPUT_GAMMAS, "solver": SOLVERS, "dtype": DTYPES,
                   "sgd_optimizer": SGD_OPTIMIZERS, "sgd_objective": SGD_OBJECTIVES,
                   "weight_init": SOURCE_INITS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                bad(name, f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(sorted(valid))}")
        from sweeper.data import DATASETS
        from sweeper.experiments.construction.targets import TARGETS
        from sweeper.nn.activations import ACTIVATIONS

        try:
            target = TARGETS[self.target]
        except SweeperError as e:
            raise e.at("target") from None
        try:
            dataset = DATASETS[self.dataset]
        except SweeperError as e:
            raise e.at("dataset") from None
        if target.input_shape is not None and tuple(dataset.shape) != target.input_shape:
            fits = sorted(n for n in DATASETS if tuple(DATASETS[n].shape) == target.input_shape)
            bad("dataset", f"target {self.target} reads {'x'.join(map(str, target.input_shape))} images, "
                           f"dataset {self.dataset} has {'x'.join(map(str, dataset.shape))}; "
                           f"valid datasets: {', '.join(fits)}")

        try:
            act = ACTIVATIONS.canonical(self.activation)
        except SweeperError as e:
            raise e.at("activation") from None
        if ACTIVATIONS[act].linear_region is None:
            supported = sorted(n for n in ACTIVATIONS if ACTIVATIONS[n].linear_region is not None)
            bad("activation", f"no linear region known for {act!r}; supported: {', '.join(supported)}")
        positive = {"hidden": self.hidden, "hidden_layers": self.hidden_layers, "cnn_channels": self.cnn_channels,
                    "kernel_size": self.kernel_size, "width_ratio": self.width_ratio,
                    "source_depth": self.source_depth, "batch_size": self.batch_size, "target_lr": self.target_lr,
                    "dense_limit": self.dense_limit,
                    "lsqr_iters": self.lsqr_iters, "tol": self.tol, "sgd_lr": self.sgd_lr}
        for name, v in positive.items():
            if not v > 0:
                bad(name, f"must be > 0, got {v!r}")
        for name in ("target_epochs", "sgd_epochs", "calibration_size", "lm_iters", "seed", "linear_scale",
                     "train_size", "test_size"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)!r}")
        if self.shift_margin < 1:
            bad("shift_margin", f"must be >= 1 (the shifted range must stay inside the linear region), got {self.shift_margin!r}")
        if self.kernel_size % 2 != 1:
            bad("kernel_size", f"must be odd ('same' padding), got {self.kernel_size}")
