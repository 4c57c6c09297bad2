"""Burkholz (ICLR 2024): BatchNorm's γ and β alone turn a random network into any target network.

`run(spec)` trains a small target on digits, builds the random source and constructs it (sets its
BN layers by solving the scale equations, `networks` and `solve`), trains the same random source
BN-only with SGD/Adam as the baseline (`training`), measures both, and returns one row of scalars
plus tables. No Ray here; a pure, seeded function of its spec.
"""
from __future__ import annotations

import copy
import math
import time

import pandas as pd
import torch
from torch import nn

from sweeper.errors import SweeperError
from sweeper.experiment import Progress, TrialResult
from sweeper.experiments.construction.networks import (
    DTYPES,
    BNBlock,
    build_source,
    build_target,
    chunk_rows,
    construct,
    linear_half_width,
    logits,
    relative_error,
    split,
    weight_layers,
)
from sweeper.experiments.construction.solve import degrees_of_freedom, expected_residual
from sweeper.experiments.construction.spec import ConstructionSpec
from sweeper.experiments.construction.training import train_bn_only, train_target
from sweeper.nn.activations import ACTIVATIONS


class _RelError:
    """||a - b|| / ||b|| over chunks. One chunk is relative_error itself (the same bits as an
    unchunked evaluation); several sum the squares."""

    def __init__(self) -> None:
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.chunks, self.diff, self.ref = 0, 0.0, 0.0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.chunks == 0:
            self.first = (a, b)
        self.chunks += 1
        a, b = a.double(), b.double()
        self.diff += float(((a - b) ** 2).sum())
        self.ref += float((b ** 2).sum())

    @property
    def value(self) -> float:
        if self.chunks == 1:
            return relative_error(*self.first)
        return math.sqrt(self.diff) / max(math.sqrt(self.ref), 1e-300)


@torch.no_grad()
def layer_report(target: nn.Sequential, source: nn.Sequential, x: torch.Tensor,
                 spec: ConstructionSpec) -> list[dict]:
    """Per target weight layer, on inputs x: the block's error given the target's own layer input
    (local), the error of the network up to and including it (cumulative), and the fraction of the
    block's inner pre-activations outside the linear region. Seen in chunks (CIFAR-sized blocks)."""
    region = ACTIVATIONS[spec.activation].linear_region
    eps_lin = linear_half_width(spec)
    target.eval()
    source.eval()
    dtype = next(source.parameters()).dtype
    blocks = [i for i, smod in enumerate(source) if isinstance(smod, BNBlock)]
    local = {i: _RelError() for i in blocks}
    cumulative = {i: _RelError() for i in blocks}
    outside = {i: 0 for i in blocks}
    total = {i: 0 for i in blocks}
    for chunk in split(x, chunk_rows(source, x, torch.finfo(dtype).bits // 8, most=len(x))):
        t, s = chunk.to(dtype), chunk.to(dtype)
        for i, (tmod, smod) in enumerate(zip(target, source)):
            if isinstance(smod, BNBlock):
                local[i].add(smod(t), tmod(t))
                h = s
                for mod in smod:
                    if not isinstance(mod, (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
                        if region.mode == "positive":
                            outside[i] += int((h < region.onset).sum())
                        else:
                            outside[i] += int((h.abs() > 10 * eps_lin).sum())
                        total[i] += h.numel()
                    h = mod(h)
                t, s = tmod(t), h
                cumulative[i].add(s, t)
            else:
                t, s = tmod(t), smod(s)
    return [{"module": i, "local_rel_error": local[i].value, "cumulative_rel_error": cumulative[i].value,
             "outside_linear_frac": outside[i] / max(total[i], 1)} for i in blocks]


LAYER_COLUMNS = {
    "layer": "int64", "kind": "str", "n_out": "int64", "n_in": "int64", "P": "int64", "m": "int64",
    "source_depth": "int64", "total_width": "int64", "dof": "int64", "width_ratio_actual": "float64",
    "solver_used": "str", "iterations": "int64", "weight_residual": "float64", "condition_number": "float64",
    "condition_method": "str", "solve_seconds": "float64",
    "expected_rel_error": "float64",  # sqrt(1 - dof / P): the residual to expect (solve.expected_residual)
    "local_rel_error": "float64",
    "cumulative_rel_error": "float64", "outside_linear_frac": "float64",
}


def load_data(spec: ConstructionSpec, data_root: str | None = None):
    """(x_train, y_train, x_test, y_test) with images as float32 in [0, 1]; class-balanced subsets
    when train_size / test_size are set."""
    from sweeper.data import balanced_subset, load_arrays

    x_tr, y_tr, x_te, y_te = load_arrays(spec.dataset, data_root)
    tr, te = balanced_subset(y_tr, spec.train_size), balanced_subset(y_te, spec.test_size)
    return x_tr[tr].float() / 255.0, y_tr[tr], x_te[te].float() / 255.0, y_te[te]


def run(spec: ConstructionSpec, data_root: str | None = None, *, threads: int | None = None,
        callbacks=(), resume=None) -> TrialResult:
    """One construction trial: train the target, construct the source by solving for its BN
    parameters, train the same random source BN-only as the baseline, measure both. It has no
    epochs and no resumable state: `callbacks` are called once, at the end, and `resume` is
    ignored; torch's threads are the caller's (`threads` is accepted for the common signature)."""
    if not isinstance(spec, ConstructionSpec):
        raise SweeperError(f"expected a ConstructionSpec, got {type(spec).__name__}")
    dtype = DTYPES[spec.dtype]
    x_tr, y_tr, x_te, y_te = load_data(spec, data_root)
    from sweeper.data import DATASETS

    num_classes = DATASETS[spec.dataset].num_classes

    t0 = time.perf_counter()
    target = build_target(spec, tuple(x_tr.shape[1:]), num_classes)
    train_target(target, x_tr, y_tr, spec)
    target_seconds = time.perf_counter() - t0

    x_cal = x_tr if spec.calibration_size == 0 else x_tr[: spec.calibration_size]
    t0 = time.perf_counter()
    source = build_source(target, spec)
    infos = construct(target, source, x_cal, spec)
    construction_seconds = time.perf_counter() - t0
    source.to(dtype)
    target_eval = copy.deepcopy(target).to(dtype).eval()

    t_logits = logits(target_eval, x_te)
    s_logits = logits(source, x_te)
    layers = layer_report(target_eval, source, x_te, spec)

    # BN-only baseline on the same random source weights (same seed -> same weights).
    t0 = time.perf_counter()
    baseline = build_source(target, spec).to(dtype)
    teacher_tr = logits(target_eval, x_tr)
    curve = train_bn_only(baseline, x_tr.to(dtype), y_tr, teacher_tr, x_te, y_te, t_logits, spec)
    sgd_seconds = time.perf_counter() - t0
    b_logits = logits(baseline, x_te)

    def acc(out: torch.Tensor) -> float:
        return float((out.argmax(1) == y_te).double().mean())

    widx = weight_layers(target)
    D = spec.source_depth
    rows = []
    for k, (i, info, rep) in enumerate(zip(widx, infos, layers)):
        layer, block = target[i], source[i]
        n_out, n_in = layer.weight.shape[0], layer.weight[0].numel()
        P, m = n_out * n_in, block.width
        dof = degrees_of_freedom(m, n_out, D, spec.output_gamma == "solve")
        rows.append({"layer": k, "kind": "conv" if block.conv else "linear", "n_out": n_out, "n_in": n_in,
                     "P": P, "m": m, "source_depth": D, "total_width": D * m, "dof": dof,
                     "width_ratio_actual": D * m / P, "solver_used": info.method, "iterations": info.iterations,
                     "weight_residual": info.residual, "condition_number": info.condition_number,
                     "condition_method": info.condition_method, "solve_seconds": info.seconds,
                     "expected_rel_error": expected_residual(dof, P),
                     "local_rel_error": rep["local_rel_error"],
                     "cumulative_rel_error": rep["cumulative_rel_error"],
                     "outside_linear_frac": rep["outside_linear_frac"]})
    layer_table = pd.DataFrame(rows, columns=list(LAYER_COLUMNS)).astype(LAYER_COLUMNS)

    P_total = int(layer_table["P"].sum())
    m_total = int(layer_table["total_width"].sum())
    n_bn = sum(bn.weight.numel() for bn in source.modules() if isinstance(bn, nn.modules.batchnorm._BatchNorm))
    outside = [r["outside_linear_frac"] * 1.0 for r in layers]
    test_acc, sgd_acc = acc(s_logits), acc(b_logits)
    row = {
        "width_ratio": float(spec.width_ratio),
        "source_depth": int(spec.source_depth),
        "P": P_total,
        "m": m_total,
        "m_over_P": m_total / P_total,
        "dof": int(layer_table["dof"].sum()),
        "bn_params": int(2 * n_bn),
        "relative_error": relative_error(s_logits, t_logits),
        "argmax_agreement": float((s_logits.argmax(1) == t_logits.argmax(1)).double().mean()),
        "test_acc": test_acc,
        "target_test_acc": acc(t_logits),
        "sgd_test_acc": sgd_acc,
        "sgd_relative_error": relative_error(b_logits, t_logits),
        "sgd_argmax_agreement": float((b_logits.argmax(1) == t_logits.argmax(1)).double().mean()),
        "construction_minus_sgd_acc": test_acc - sgd_acc,
        "weight_residual": float(layer_table["weight_residual"].max()),
        "expected_rel_error": float(layer_table["expected_rel_error"].max()),
        "condition_number": float(layer_table["condition_number"].max()),
        "outside_linear_frac": float(max(outside) if outside else 0.0),
        "solver_used": "+".join(sorted(set(layer_table["solver_used"]))),
        "solve_seconds": float(layer_table["solve_seconds"].sum()),
        "construction_seconds": construction_seconds,
        "sgd_seconds": sgd_seconds,
        "target_seconds": target_seconds,
    }
    tables = {"construction_layers": layer_table, "sgd_curve": curve}
    for callback in callbacks:
        callback(Progress(epoch=0, epochs=0, metrics=row, end=True, tables=tables))
    return TrialResult(row, tables)
