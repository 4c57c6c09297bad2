"""The spec of a decomposed-BN trial. Imports no torch: the registries it checks names against
(rescalings, inputs, activations) are imported when a spec is resolved."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from sweeper.checks import SEED, Range, at_least, positive
from sweeper.errors import SweeperError
from sweeper.spec import Spec

DTYPES = ("float64", "float32")
PROBES = ("output", "normed")


@dataclasses.dataclass(frozen=True)
class DecomposedSpec(Spec):
    """One trial: a random MLP with decomposed BN, propagated to depth, measured per layer.

    rc, rs, nl        the three components (rs: none | std | rownorm | global; nl: an activation)
    depth, width      L layers after the input layer 0, width d
    batch             n inputs
    inputs            gaussian | outlier (the limiting configuration) | digits | cifar10
    input_scale       RMS entry of the input layer (matters only for non-homogeneous nl)
    input_corr        gaussian only: common component, pairwise input cosines ≈ input_corr
    input_noise       outlier only: per-entry std of the noise added to the ideal configuration
    dtype             float64 | float32 (metrics are always computed in float64)
    eps               added to the variance in RS
    seed              inputs, image choice, projection and every weight derive from it
    record_every      stride of the per-layer table (layer 0 and the last layer always kept)
    cosine_layers     comma-separated layers whose full cosine matrix is kept; negative counts
                      from the end (-1 = last); layers beyond depth are skipped
    probe             where H is measured: "output" (after NL) or "normed" (after RC/RS, before NL)
    """

    experiment: ClassVar[str] = "decomposed"
    # depth and width far beyond the paper's (depth 300-1000, width 512-1024); the rest as validate says
    RANGES: ClassVar[dict[str, Range]] = {
        "depth": Range(0, 100_000, integer=True),
        "width": Range(1, 65_536, integer=True),
        "batch": Range(2, 65_536, integer=True),
        "input_scale": positive(),
        "input_corr": Range(0, 1, high_open=True),
        "input_noise": at_least(0),
        "eps": positive(),
        "seed": SEED,
        "record_every": at_least(1, integer=True),
    }

    rc: bool = True
    rs: str = "none"
    nl: str = "relu"
    depth: int = 300
    width: int = 512
    batch: int = 16
    inputs: str = "gaussian"
    input_scale: float = 1.0
    input_corr: float = 0.0
    input_noise: float = 0.0
    dtype: str = "float64"
    eps: float = 1e-5
    seed: int = 0
    record_every: int = 1
    cosine_layers: str = "0,10,100,-1"
    probe: str = "output"

    def resolve(self) -> "DecomposedSpec":
        from sweeper.experiments.decomposed.inputs import INPUTS
        from sweeper.experiments.decomposed.network import RESCALINGS
        from sweeper.nn.activations import ACTIVATIONS

        try:
            canon = {"rs": RESCALINGS.canonical(self.rs), "nl": ACTIVATIONS.canonical(self.nl),
                     "inputs": INPUTS.canonical(self.inputs)}
        except SweeperError as e:
            field = "rs" if self.rs not in RESCALINGS else "nl" if self.nl not in ACTIVATIONS else "inputs"
            raise SweeperError(e.message, field) from None
        return dataclasses.replace(self, **canon)

    def validate(self) -> None:
        from sweeper.experiments.decomposed.inputs import INPUTS
        from sweeper.experiments.decomposed.network import RESCALINGS
        from sweeper.nn.activations import ACTIVATIONS

        for field, ok, what in [
            ("rs", self.rs in RESCALINGS, f"valid choices: {RESCALINGS.choices()}"),
            ("nl", self.nl in ACTIVATIONS, f"valid choices: {ACTIVATIONS.choices()}"),
            ("inputs", self.inputs in INPUTS, f"valid choices: {INPUTS.choices()}"),
            ("depth", self.depth >= 0, "must be >= 0"),
            ("width", self.width >= 1, "must be >= 1"),
            ("batch", self.batch >= 2, "must be >= 2"),
            ("input_scale", self.input_scale > 0, "must be > 0"),
            ("input_corr", 0.0 <= self.input_corr < 1.0, "must be in [0, 1)"),
            ("input_noise", self.input_noise >= 0.0, "must be >= 0"),
            ("dtype", self.dtype in DTYPES, f"valid choices: {', '.join(DTYPES)}"),
            ("eps", self.eps > 0, "must be > 0"),
            ("record_every", self.record_every >= 1, "must be >= 1"),
            ("probe", self.probe in PROBES, f"valid choices: {', '.join(PROBES)}"),
        ]:
            if not ok:
                raise SweeperError(f"{getattr(self, field)!r} is invalid: {what}", field)
        if self.input_corr and self.inputs != "gaussian":
            raise SweeperError("input_corr applies to gaussian inputs only", "input_corr")
        if self.input_noise and self.inputs != "outlier":
            raise SweeperError("input_noise applies to outlier inputs only", "input_noise")
        self.cosine_layer_list()

    def cosine_layer_list(self) -> list[int]:
        """The layers (0..depth, sorted, unique) whose cosine matrix is kept."""
        out = set()
        for part in (p.strip() for p in self.cosine_layers.split(",")):
            if not part:
                continue
            try:
                k = int(part)
            except ValueError:
                raise SweeperError(f"expected comma-separated integers, got {self.cosine_layers!r}",
                                   "cosine_layers") from None
            k = self.depth + 1 + k if k < 0 else k
            if 0 <= k <= self.depth:
                out.add(k)
        return sorted(out)
