"""Experiment `construction`: Burkholz's γ/β construction beside BN-only SGD on the same random
weights.

    spec.py      ConstructionSpec (no torch)
    solve.py     the scale equations, numpy float64
    networks.py  target, random source (BNBlocks) and the construction that sets its BN layers
    training.py  the target's training and the BN-only baseline
    run.py       run(spec) -> TrialResult, and the per-layer report
"""
from __future__ import annotations

from sweeper.experiment import Experiment
from sweeper.experiments.construction.spec import ConstructionSpec

# The trials row of `run`: column -> type (declared up front so every trial shares one schema).
# width_ratio and source_depth repeat the spec fields of the same name (same values).
ROW_COLUMNS: dict[str, type] = {
    "width_ratio": float, "source_depth": int,
    "P": int,  # target weights, summed over target layers (biases excluded)
    "m": int,  # total BN width of the source (D * m per target layer, summed; output BNs excluded)
    "m_over_P": float,
    "dof": int,  # free scales, summed over layers: D*m - (D-1) per layer, D*m + n_out - D with output_gamma solve
    "bn_params": int,
    "relative_error": float,  # ||source(x) - target(x)|| / ||target(x)||, test logits
    "argmax_agreement": float, "test_acc": float, "target_test_acc": float,
    "sgd_test_acc": float, "sgd_relative_error": float, "sgd_argmax_agreement": float,
    "construction_minus_sgd_acc": float,
    "weight_residual": float,  # worst layer's ||F(e) - W|| / ||W|| (float64 solve)
    # the worst layer's sqrt(1 - dof / P) (0 at and above the threshold): the weight residual to
    # expect below it; exact in expectation at depth 1 with output_gamma fixed (solve.expected_residual)
    "expected_rel_error": float,
    "condition_number": float,  # worst layer's
    "outside_linear_frac": float, "solver_used": str,
    "solve_seconds": float, "construction_seconds": float, "sgd_seconds": float, "target_seconds": float,
}

EXPERIMENT = Experiment(
    name="construction",
    spec_type=ConstructionSpec,
    run_function="sweeper.experiments.construction.run:run",
    columns=ROW_COLUMNS,
    metric="relative_error",
    mode="min",
    figure_modules=("sweeper.analysis.construction",),
    description="solve for the γ/β that make a random source network reproduce a target (Burkholz 2024), "
    "beside BN-only SGD on the same random weights",
)
