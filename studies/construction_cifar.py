"""Burkholz (ICLR 2024) on CIFAR-10: a small CNN trained on CIFAR-10 is the target, and a random
source network reproduces it through its BN parameters alone (every γ and β solved,
output_gamma "solve"), beside BN-only SGD on the same random weights. Reported per trial: the
logits' relative error to the target (relative_error, with expected_rel_error = sqrt(1 - dof/P) to
expect below the threshold), and the source's test accuracy (test_acc) against the target's
(target_test_acc).

Costs: the source's first block is about 27 x cnn_channels x width_ratio random 3x3 filters at full
resolution, so calibration is limited to calibration_size images and the target trains on a
class-balanced subset. Needs a data root with CIFAR-10 (--data-root or $SWEEPER_DATA_ROOT).
"""
from sweeper import Study

study = Study(
    name="construction_cifar",
    experiment="construction",
    dataset="cifar10",
    axes={"width_ratio": [0.5, 0.8, 0.9, 1.0, 1.2], "output_gamma": ["solve", "fixed"], "seed": [0, 1, 2]},
    recipe={"target": "cifar-cnn", "cnn_channels": 8, "activation": "relu", "train_size": 10000, "test_size": 0,
            "target_epochs": 5, "calibration_size": 2000, "sgd_epochs": 2, "dtype": "float32"},
    figures=["construction_error", "construction_condition", "construction_vs_sgd", "depth_width_tradeoff"],
    resources={"cpu": 1, "gpu": 0},
    quick={
        # about a minute a trial on one core
        "axes": {"width_ratio": [0.8, 1.2], "output_gamma": ["solve"], "seed": [0]},
        "recipe": {"target": "cifar-cnn", "cnn_channels": 4, "activation": "relu", "train_size": 2000,
                   "test_size": 1000, "target_epochs": 5, "calibration_size": 500, "sgd_epochs": 1,
                   "dtype": "float32"},
    },
)
