"""The normalisation layer as an axis: does BN-only training need BatchNorm, or does any
per-channel affine map γ·x + β on random features do as well?

Six layers, each with a per-channel γ and β that the `bn` subset trains (sweeper/nn/norms.py):
  batch     BatchNorm: standardise each channel over the batch (the papers' layer)
  layer     GroupNorm with one group: standardise each example over all its channels
  group     GroupNorm with 4 groups
  instance  standardise each channel of each example over its positions
  affine    γ·x + β with no standardisation at all
  none      no layer (nothing for `bn` to train: the floor)
x trainable all, bn, random (as many random conv weights as BN parameters) x depth x seed, on the
CIFAR ResNets with the paper's recipe.

Residual scale (SkipInit, `residual_init`). Without standardisation the residual branches add up
their variance from block to block, so `affine` and `none` get a scalar α on each residual branch,
initialised at 0.1; the normalising layers keep the plain residual (α absent, the paper's network).
The `bn` subset selects only the norm layers' γ and β, never α (α trains under `all`), so α = 0
would switch every residual branch off for good under `bn` and `random`: the branch's γ, β would
get no gradient. 0.1 keeps the branches alive and small, and under `bn` the branch's last γ, which
multiplies α, can still grow it (effective scale α·γ per channel).

    sweeper run studies/norm_types.py --address auto --store s3://BUCKET/sweeps --data-root DIR

The quick variant (about 10 minutes on 2 CPU cores): ResNet-8 and ResNet-14 at width 8, 2 seeds,
a 2,000-image class-balanced subset of CIFAR-10 (500 test images), 3 epochs at batch 32, bf16:

    sweeper run studies/norm_types.py --quick --data-root ../shared/data/cifar10

The cpu variant (`--scale cpu`, the laptop recipe of depth_vs_width.py's: 10,000 training images,
the full test set, 20 epochs, batch 128, bf16): ResNet-8 and ResNet-20 at width 8, every layer,
BN-only against the equal-count random baseline, 3 seeds, 72 trials:

    sweeper run studies/norm_types.py --scale cpu --data-root ../shared/data/cifar10

Its BatchNorm trials at depth 20 (BN-only and random) are depth_vs_width.py's ResNet-20-8 trials:
run after it into the same store, `run` copies them (sweeper.reuse).
"""
from sweeper import Study

SKIPINIT = 0.1  # residual-branch scale for the layers that do not standardise

NORMS = [
    {"norm": "batch"},
    {"norm": "layer"},
    {"norm": "group(groups=4)"},
    {"norm": "instance"},
    {"norm": "affine", "residual_init": SKIPINIT},
    {"norm": "none", "residual_init": SKIPINIT},
]

study = Study(
    name="norm_types",
    dataset="cifar10",
    axes={
        "norm": NORMS,  # a joint axis: each entry sets the norm and, with it, the residual scale
        "trainable": ["all", "bn", "random"],
        "depth": [14, 32, 56, 110],
        "seed": [0, 1, 2],
    },
    recipe={
        "family": "resnet",
        "width": 16,
        "augment": "crop_flip",
        "weight_init": "kaiming_normal",
        "bn_init": "uniform",  # γ ~ U[0, 1), β = 0 for every layer that has them
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "milestones": [0.5, 0.75],
        "lr_drop": 0.1,
    },
    measure=["bn"],
    figures=["norm_accuracy", "norm_accuracy_vs_depth", "norm_gamma_distribution"],
    resources={"cpu": 4, "gpu": 1},
    quick={
        "axes": {"depth": [8, 14], "seed": [0, 1]},
        "recipe": {"width": 8, "train_size": 2000, "test_size": 500, "epochs": 3, "batch_size": 32,
                   "precision": "bf16"},
        "resources": {"cpu": 1, "gpu": 0},
    },
    cpu={
        # BN-only per layer against the random baseline; `all` (a ceiling, at the cost of a random
        # trial each) is left to the full study
        "axes": {"depth": [8, 20], "trainable": ["bn", "random"], "seed": [0, 1, 2]},
        "recipe": {"width": 8, "train_size": 10_000, "test_size": 0, "epochs": 20, "batch_size": 128,
                   "precision": "bf16", "eval_every": 5},
        "resources": {"cpu": 1, "gpu": 0},
    },
)
