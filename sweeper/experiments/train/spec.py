"""The spec of a training trial: the axes and recipe of Frankle et al.'s experiments.

Defaults are open_lth's CIFAR recipe (SGD, momentum 0.9, lr 0.1 dropped 10x at 50% and 75% of
160 epochs, batch 128, weight decay 1e-4, crop+flip) and the paper's initialisation (kaiming-normal
weights, γ ~ U[0, 1), β = 0). Changing a default here changes trial ids: don't (see spec.py).
This module imports no torch: the registries it checks names against are imported on resolve.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from sweeper.checks import SEED, Range, at_least, positive
from sweeper.errors import SweeperError
from sweeper.spec import Spec

DEFAULT_CLAMP = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
PRECISIONS = ("fp32", "bf16")
#: torch.compile backends for the training and evaluation steps: `none` runs eagerly (the default:
#: on this project's CPUs compiling gained nothing, and it costs a minute per trial); `inductor`
#: generates kernels (GPUs); `aot_eager` traces the step without generating code (a portable check
#: that a network compiles).
COMPILE_BACKENDS = ("none", "inductor", "aot_eager")
#: Far beyond the papers' largest networks (ResNet-866, WRN-14-32: width 512), and small enough that
#: every tensor shape fits torch's int64 sizes: an absurd width crashed `sweeper params`.
MAX_DEPTH, MAX_WIDTH = 10_000, 65_536


_RANDOM_K = re.compile(r"\s*random\s*\(\s*k\s*=\s*([^)]*?)\s*\)\s*")


def parse_random_k(value: str) -> tuple[str, int]:
    """`random(k=N)` -> ("random", N): the random baseline with N weights per output channel."""
    m = _RANDOM_K.fullmatch(value)
    if not m:
        raise SweeperError(f"expected a subset name or random(k=N), got {value!r}", "trainable")
    if not re.fullmatch(r"[0-9]+", m[1]) or int(m[1]) < 1:
        raise SweeperError(f"random(k=N) needs N a positive integer (weights per output channel), got {m[1]!r}",
                           "trainable")
    return "random", int(m[1])


@dataclasses.dataclass(frozen=True)
class TrainSpec(Spec):
    experiment: ClassVar[str] = "train"
    RANGES: ClassVar[dict[str, Range]] = {
        "train_size": at_least(0, integer=True),
        "test_size": at_least(0, integer=True),
        "depth": Range(1, MAX_DEPTH, integer=True),
        "width": Range(1, MAX_WIDTH, integer=True),
        "residual_init": at_least(0),
        "random_k": at_least(1, integer=True),
        "epochs": Range(0, 1_000_000, integer=True),
        "batch_size": Range(1, 2**31, high_open=True, integer=True),
        "lr": positive(),
        "momentum": Range(0, 1, high_open=True),
        "weight_decay": at_least(0),
        "milestones": Range(0, 1, low_open=True, high_open=True),
        "lr_drop": Range(0, 1, low_open=True),
        "eval_every": at_least(1, integer=True),
        "clamp_thresholds": at_least(0),
        "seed": SEED,
    }

    # data
    dataset: str = "cifar10"
    train_size: int = 0  # 0: the whole training set; else a class-balanced subset
    test_size: int = 0
    augment: str = "crop_flip"
    # model
    family: str = "resnet"
    depth: int = 20
    width: int = 16
    activation: str = "relu"
    norm: str = "batch"
    residual_init: float = 1.0  # SkipInit-style residual-branch scale; 1.0 = plain residual
    weight_init: str = "kaiming_normal"
    bn_init: str = "uniform"
    # what trains
    trainable: str = "all"
    random_k: int = 2  # weights per output channel `random` trains (2: the BN count); or trainable random(k=N)
    # recipe
    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training at which lr drops
    lr_drop: float = 0.1
    precision: str = "fp32"
    compile: str = "none"
    # Epochs between test-set passes during training (the last epoch is always tested): the final
    # accuracy is the same whatever it is, while a pass over a 10,000-image test set every epoch
    # costs a third of a small network's trial on a CPU. Untested epochs' curves rows have no test_*.
    eval_every: int = 1
    # what to measure
    measure: tuple[str, ...] = ("bn",)
    clamp_thresholds: tuple[float, ...] = DEFAULT_CLAMP
    seed: int = 0

    # Measurements run after training and its final evaluation, and leave the network as they
    # found it (clamp puts γ back): sparsity.py's BN-only trials are depth_vs_width.py's, with more
    # measured.
    RECORDING: ClassVar[tuple[str, ...]] = ("measure", "clamp_thresholds")

    def records_within(self, done: "TrainSpec") -> bool:
        if not set(self.measure) <= set(done.measure):
            return False
        return "clamp" not in self.measure or done.clamp_thresholds == self.clamp_thresholds

    def keeps_table(self, table: str) -> bool:
        from sweeper.experiments.train.measures import MEASUREMENTS

        return table not in MEASUREMENTS or MEASUREMENTS.canonical(table) in self.measure

    @classmethod
    def expand_shorthands(cls, values: dict[str, Any]) -> dict[str, Any]:
        if isinstance(values.get("trainable"), str) and "(" in values["trainable"]:
            # `random(k=4)`: k as an axis value beside the other subsets (k = 2 matches the BN count)
            values["trainable"], k = parse_random_k(values["trainable"])
            if "random_k" in values and values["random_k"] != k:
                raise SweeperError(f"random(k={k}) disagrees with random_k {values['random_k']!r}: set k in "
                                   "one place", "trainable")
            values["random_k"] = k
        if "model" in values:
            from sweeper.models import parse_model

            family, depth, width = parse_model(values.pop("model"))
            values.setdefault("family", family)
            values.setdefault("depth", depth)
            if "width" not in values:
                values["width"] = width
        elif "family" in values and "width" not in values:
            from sweeper.models import FAMILIES

            values["width"] = FAMILIES[values["family"]].default_width
        return values

    def tests_after(self, epoch: int) -> bool:
        """Whether the test set is evaluated after `epoch` (counted from 1): every `eval_every`-th
        and the last, whose evaluation is also the trial's final one."""
        return epoch % self.eval_every == 0 or epoch == self.epochs

    @property
    def test_passes(self) -> int:
        """Passes over the test set a trial makes (one for a trial that trains no epoch)."""
        return max(1, self.epochs // self.eval_every + (self.epochs % self.eval_every > 0))

    @property
    def model(self) -> str:
        from sweeper.models import model_name

        return model_name(self.family, self.depth, self.width)

    def resolve(self) -> "TrainSpec":
        from sweeper.data import AUGMENTATIONS, DATASETS
        from sweeper.experiments.train.measures import MEASUREMENTS
        from sweeper.experiments.train.subsets import SUBSETS
        from sweeper.models import FAMILIES
        from sweeper.nn.activations import ACTIVATIONS
        from sweeper.nn.init import BN_INITS, canonical_weight_init
        from sweeper.nn.norms import canonical_norm

        def named(field: str, fn):
            try:
                return fn(getattr(self, field))
            except SweeperError as e:
                raise e.at(field) from None

        changes = dict(
            dataset=named("dataset", DATASETS.canonical),
            augment=named("augment", AUGMENTATIONS.canonical),
            family=named("family", FAMILIES.canonical),
            activation=named("activation", ACTIVATIONS.canonical),
            norm=named("norm", canonical_norm),
            weight_init=named("weight_init", canonical_weight_init),
            bn_init=named("bn_init", BN_INITS.canonical),
            trainable=named("trainable", SUBSETS.canonical),
            measure=tuple(named("measure", lambda ms: [MEASUREMENTS.canonical(m) for m in ms])),
        )
        if changes["trainable"] != "random" and isinstance(self.random_k, int) and self.random_k >= 1:
            # k means nothing to the other subsets: one id for them whatever k a grid crosses them with
            changes["random_k"] = type(self).random_k
        if SUBSETS[changes["trainable"]].fixes_norm_affine:
            changes["bn_init"] = "fixed"  # all-but-bn: γ, β pinned at 1, 0 whatever was asked
        if changes["trainable"] == "none":
            changes["epochs"] = 0  # evaluate at initialisation
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        from sweeper.models import FAMILIES

        FAMILIES[self.family].check(self.depth, self.width)
        positive = {"batch_size": self.batch_size, "lr": self.lr}
        for field, value in positive.items():
            if not value > 0:
                raise SweeperError(f"must be positive, got {value!r}", field)
        if self.epochs < (0 if self.trainable == "none" else 1):
            raise SweeperError(f"must be at least 1, got {self.epochs}", "epochs")
        if 0 < self.train_size < self.batch_size and self.epochs > 0:
            # batches drop the last partial one: no step would run, and the trial would "finish"
            # having trained nothing (the loop fails such a trial too; this says so before any work)
            raise SweeperError(f"{self.batch_size} is larger than train_size {self.train_size}: no full "
                               "batch would form and nothing would train; use a batch_size of at most "
                               "train_size", "batch_size")
        for field in ("weight_decay", "train_size", "test_size", "residual_init"):
            if getattr(self, field) < 0:
                raise SweeperError(f"must not be negative, got {getattr(self, field)!r}", field)
        if not 0 <= self.momentum < 1:
            raise SweeperError(f"must be in [0, 1), got {self.momentum!r}", "momentum")
        if not 0 < self.lr_drop <= 1:
            raise SweeperError(f"must be in (0, 1], got {self.lr_drop!r}", "lr_drop")
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise SweeperError(
                f"must be increasing fractions of training in (0, 1), got {self.milestones!r}", "milestones"
            )
        if self.precision not in PRECISIONS:
            raise SweeperError(
                f"unknown precision {self.precision!r}; valid choices: {', '.join(PRECISIONS)}", "precision"
            )
        if self.compile not in COMPILE_BACKENDS:
            raise SweeperError(
                f"unknown torch.compile backend {self.compile!r}; valid choices: {', '.join(COMPILE_BACKENDS)}",
                "compile",
            )
        family = FAMILIES[self.family]
        if self.residual_init != 1.0 and not family.residual_scale:
            scaled = ", ".join(f for f in FAMILIES.names() if FAMILIES[f].residual_scale)
            raise SweeperError(
                f"the residual-branch scale exists only in CIFAR ResNets (family {scaled}); "
                f"{self.model} would ignore it",
                "residual_init",
            )
        if not family.convolutional:  # an MLP's norms see (N, C) features
            from sweeper.nn.norms import one_value_groups

            if one_value_groups(self.norm, self.width):
                raise SweeperError(
                    f"{self.norm} standardises each unit of an MLP over a single value, so it outputs "
                    f"the constant β; use batch, layer, group with fewer groups, affine or none",
                    "norm",
                )
        if any(t < 0 for t in self.clamp_thresholds) or not self.clamp_thresholds:
            raise SweeperError(
                f"thresholds on |γ| must be non-negative, got {self.clamp_thresholds!r}", "clamp_thresholds"
            )
        if self.trainable == "random":
            from sweeper.experiments.train.model import min_fan_in

            fan_in = min_fan_in(self)
            if not 1 <= self.random_k <= fan_in:
                raise SweeperError(
                    f"must be between 1 and the smallest conv fan-in ({fan_in}) of {self.model}, "
                    f"got {self.random_k}",
                    "random_k",
                )
