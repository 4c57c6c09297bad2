"""Batch normalisation decomposed, at initialisation (project issue 8).

Nachum, Bondaschi, Gastpar, Khina, "Batch Normalization Decomposed" (2024), following Daneshmand,
Joudaki, Bach, "Batch normalization orthogonalizes representations in deep random networks"
(NeurIPS 2021). A BN layer at initialisation is split into three independent switches:

- RC, recentering: subtract each neuron's batch mean;
- RS, rescaling: divide each neuron by its batch std (``"std"``, BatchNorm's own rule, the std
  taken about the batch mean whether or not RC is on) or by its batch RMS (``"rownorm"``,
  Daneshmand et al.: each neuron's row across the batch gets norm sqrt(n)); ``"global"`` divides
  the whole layer by one scalar, its RMS entry (a rescaling that changes no direction);
  ``"none"`` is off;
- NL, the non-linearity: any name of the activation registry (``identity`` = a linear network).

One layer is ``h -> W h -> RS(RC(.)) -> NL`` with W ~ N(0, 1/d), never trained. Layer 0 is the
input batch at width d. `run(spec)` propagates a batch of n inputs to depth L and measures, per
layer, the geometry of the representation H (d x n, one column per input); see `layer_metrics`.

Findings to reproduce: with RC and a ReLU, the batch collapses to one cluster except one point that
sits far away (norm ratio -> n-1) in an orthogonal direction (|cos| -> 0); with RS alone in a linear
network the columns become nearly orthogonal, down to a floor that shrinks like 1/sqrt(d).

"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from sweeper.experiment import Progress, TrialResult
from sweeper.experiments.decomposed import METRIC_COLUMNS
from sweeper.experiments.decomposed.inputs import inputs
from sweeper.experiments.decomposed.metrics import cosine_matrix, layer_metrics
from sweeper.experiments.decomposed.network import build
from sweeper.experiments.decomposed.spec import DecomposedSpec


def run(spec: DecomposedSpec, data_root: str | None = None, *, threads: int | None = None,
        callbacks=(), resume=None) -> TrialResult:
    """Propagate the spec's batch through its random network; return its row and tables. It has
    no epochs and no resumable state: `callbacks` are called once, at the end, and `resume` is
    ignored; torch's threads are the caller's (`threads` is accepted for the common signature).

    row: final-layer metrics (``final_<metric>``, final_outlier_index), outlier_stable_from (the
    first recorded layer from which the outlier is the same input to the end), final_log10_rms,
    finite (every recorded metric is finite: no layer vanished, overflowed or degenerated), seconds.
    tables["layers"]: one row per recorded layer: layer, rc, rs, nl, n, d, outlier_index,
    norm_ratio, outlier_cos, cluster_spread, orthogonality_gap, outlier_dist_ratio, mean_cos,
    log10_rms (log10 of the true RMS entry of H, tracked through renormalisation).
    tables["cosine"]: long table layer, i, j, cos (all n² pairs) for the spec's cosine layers.
    """
    t0 = time.perf_counter()
    if not isinstance(spec, DecomposedSpec):
        raise TypeError(f"expected a DecomposedSpec, got {type(spec).__name__}")
    spec = spec.resolve()
    spec.validate()
    net = build(spec)
    x0 = inputs(spec, data_root)
    keep_cos = set(spec.cosine_layer_list())

    def wanted(layer: int) -> bool:
        return layer % spec.record_every == 0 or layer == spec.depth

    rows: list[dict] = []
    cos_parts: list[pd.DataFrame] = []
    n, d = spec.batch, spec.width
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")

    def record(layer: int, h: torch.Tensor, log_scale: float) -> None:
        if not (wanted(layer) or layer in keep_cos):
            return
        H = h.detach().to(torch.float64).T  # (d, n)
        if wanted(layer):
            rms = float(H.pow(2).mean().sqrt())
            log10_rms = (math.log(rms) + log_scale) / math.log(10) if rms > 0 and math.isfinite(rms) else float("nan")
            rows.append({"layer": layer, "rc": spec.rc, "rs": spec.rs, "nl": spec.nl, "n": n, "d": d,
                         **layer_metrics(H), "log10_rms": log10_rms})
        if layer in keep_cos:
            C = cosine_matrix(H).numpy()
            cos_parts.append(pd.DataFrame({"layer": np.full(n * n, layer, dtype=np.int64),
                                           "i": ii.ravel().astype(np.int64),
                                           "j": jj.ravel().astype(np.int64),
                                           "cos": C.ravel().astype(np.float64)}))

    x = x0.to(net.dtype)
    record(0, x, 0.0)
    with torch.no_grad():
        for layer, normed, out, log_scale in net.trace(x):
            record(layer, out if spec.probe == "output" else normed, log_scale)

    layers = pd.DataFrame(rows)
    layers = layers.astype({"layer": "int64", "rc": "bool", "rs": "str", "nl": "str", "n": "int64",
                            "d": "int64", "outlier_index": "int64",
                            **{k: "float64" for k in (*METRIC_COLUMNS, "log10_rms")}})
    cosine = (pd.concat(cos_parts, ignore_index=True) if cos_parts else
              pd.DataFrame({"layer": np.zeros(0, np.int64), "i": np.zeros(0, np.int64),
                            "j": np.zeros(0, np.int64), "cos": np.zeros(0, np.float64)}))

    final = layers.iloc[-1]
    idx = layers["outlier_index"].to_numpy()
    changed = np.flatnonzero(idx != idx[-1])
    stable_from = int(layers["layer"].iloc[changed[-1] + 1]) if len(changed) else 0
    finite = bool(np.isfinite(layers[list(METRIC_COLUMNS)].to_numpy()).all())
    row = {
        **{f"final_{k}": float(final[k]) for k in METRIC_COLUMNS},
        "final_outlier_index": int(final["outlier_index"]),
        "outlier_stable_from": stable_from,
        "final_log10_rms": float(final["log10_rms"]),
        "finite": finite,
        "seconds": time.perf_counter() - t0,
    }
    tables = {"layers": layers, "cosine": cosine}
    for callback in callbacks:
        callback(Progress(epoch=0, epochs=0, metrics=row, end=True, tables=tables))
    return TrialResult(row, tables)
