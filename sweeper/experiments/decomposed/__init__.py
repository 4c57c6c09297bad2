"""Experiment `decomposed`: batch normalisation split into recentering, rescaling and the
non-linearity, in a deep random network at initialisation (Nachum et al. 2024; Daneshmand et al. 2021).

    spec.py     DecomposedSpec (no torch)
    network.py  the decomposed norm and the random MLP (rescaling registry)
    inputs.py   the inputs registry (gaussian, outlier, digits, cifar10)
    metrics.py  the geometry of one representation
    run.py      run(spec) -> TrialResult
"""
from __future__ import annotations

from sweeper.experiment import Experiment
from sweeper.experiments.decomposed.spec import DecomposedSpec

#: per-layer metrics of a representation (sweeper.experiments.decomposed.metrics.layer_metrics)
METRIC_COLUMNS = ("norm_ratio", "outlier_cos", "cluster_spread", "orthogonality_gap",
                  "outlier_dist_ratio", "mean_cos")

#: the typed result columns `run` adds to the trial's `trials` row
ROW_COLUMNS: dict[str, type] = {
    **{f"final_{k}": float for k in METRIC_COLUMNS},
    "final_outlier_index": int,
    "outlier_stable_from": int,
    "final_log10_rms": float,
    "finite": bool,
    "seconds": float,
}

EXPERIMENT = Experiment(
    name="decomposed",
    spec_type=DecomposedSpec,
    run_function="sweeper.experiments.decomposed.run:run",
    columns=ROW_COLUMNS,
    # It has no accuracy; test_acc (absent from its rows) is what the runner and the nightly report
    # tracked for it before kinds declared their metric, kept so that nothing they show changes.
    metric="test_acc",
    mode="max",
    figure_modules=("sweeper.analysis.decomposed",),
    description="a deep random network with BN split into recentering, rescaling and the non-linearity, "
    "at initialisation (Nachum et al. 2024; Daneshmand et al. 2021)",
)
