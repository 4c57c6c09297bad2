"""What BN-only training does to γ: distributions, sparsity, clamping, dead ReLUs
(Frankle et al. 2021, Figs. 4-7).

BN-only versus training everything, on the paper's deep (ResNet-D) and wide (WRN-14-k) CIFAR-10
networks with the paper's recipe. Each trial records every γ and β (table `bn`), the accuracy after
zeroing every γ with |γ| < t for t in 0 ... 0.5 (table `clamp`), and the share of ReLUs that are 0
on more than 99% of test inputs, per unit and per channel (table `dead_relu`). The share of γ near
zero (Fig. 5) is derived from `bn` in the analysis.

    sweeper run studies/sparsity.py --address auto --store s3://BUCKET/sweeps --data-root DIR

The quick variant (about 10 minutes on 2 CPU cores): networks of base width 8, deeper
(ResNet-8/14/20-8) and wider (ResNet-8-16), BN-only and all, 2 seeds, on a 5,000-image
class-balanced subset of CIFAR-10 (1,000 test images) for 6 epochs at batch 32 in bf16:

    sweeper run studies/sparsity.py --quick --data-root ../shared/data/cifar10

The cpu variant (`--scale cpu`, the laptop recipe of depth_vs_width.py's: 10,000 training images,
the full test set, 20 epochs, batch 128, bf16): BN-only on the same deeper (ResNet-14/20/26/32 at
width 8) and wider (ResNet-14 at widths 11, 14, 18) networks, 3 seeds, 21 trials, so that the
share of γ near zero and of dead ReLUs can be read against depth and against width:

    sweeper run studies/sparsity.py --scale cpu --data-root ../shared/data/cifar10

These are depth_vs_width.py's cpu BN-only trials with clamping and dead ReLUs measured as well: run
this study first, and depth_vs_width.py's run into the same store copies them (sweeper.reuse).
"""
from sweeper import Study

study = Study(
    name="sparsity",
    dataset="cifar10",
    axes={
        "model": [f"resnet-{d}" for d in (14, 32, 56, 110, 218, 434, 866)]
        + [f"wrn-14-{k}" for k in (2, 4, 8, 16, 32)],
        "trainable": ["bn", "all"],
        "seed": [0, 1, 2],
    },
    recipe={
        "augment": "crop_flip",
        "weight_init": "kaiming_normal",
        "bn_init": "uniform",  # γ ~ U[0, 1), β = 0: the initial share of |γ| < t is t
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "milestones": [0.5, 0.75],
        "lr_drop": 0.1,
        "clamp_thresholds": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
    },
    measure=["bn", "clamp", "dead_relu"],
    figures=[
        "gamma_distribution",
        "gamma_sparsity",
        "clamp_accuracy",
        "dead_relu",
        "gamma_by_layer",
        "beta_distribution",
        "accuracy_vs_depth_width",
        "accuracy_vs_bn_params",
        "table1_params",
    ],
    resources={"cpu": 4, "gpu": 1},
    quick={
        "axes": {
            "model": ["resnet-8-8", "resnet-14-8", "resnet-20-8", "resnet-8-16"],
            "seed": [0, 1],
        },
        "recipe": {"train_size": 5000, "test_size": 1000, "epochs": 6, "batch_size": 32, "precision": "bf16"},
        "resources": {"cpu": 1, "gpu": 0},
    },
    cpu={
        "axes": {
            # depth_vs_width.py's cpu networks: deeper at width 8, wider at depth 14
            "model": ["resnet-14-8", "resnet-20-8", "resnet-26-8", "resnet-32-8",
                      "resnet-14-11", "resnet-14-14", "resnet-14-18"],
            "trainable": ["bn"],  # the findings (γ near zero, dead ReLUs growing with depth) are BN-only's
            "seed": [0, 1, 2],
        },
        "recipe": {"train_size": 10_000, "test_size": 0, "epochs": 20, "batch_size": 128, "precision": "bf16",
                   "eval_every": 5},
        "resources": {"cpu": 1, "gpu": 0},
    },
)
