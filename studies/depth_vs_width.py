"""Deeper vs wider, and what each trainable subset can learn (Frankle et al. 2021, Figs. 1-3).

The paper's networks on CIFAR-10: ResNet-D (width 16, D = 14 ... 866) and WRN-14-k (depth 14,
width 16k, k = 1 ... 32), each trained six ways: all parameters, BatchNorm's γ and β only, the
output layer only, BN + output, everything but BN (γ, β pinned at 1, 0), and `random`, which
trains as many randomly chosen conv weights as the network has BN parameters (2 per channel).
Recipe: open_lth's CIFAR defaults (SGD momentum 0.9, lr 0.1 dropped 10x at epochs 80 and 120 of
160, batch 128, weight decay 1e-4, random crop + flip), kaiming-normal weights, γ ~ U[0, 1), β = 0.
That is 12 networks x 6 subsets x 3 seeds = 216 trials (wrn-14-1 is resnet-14: one trial each),
some of them (ResNet-866, WRN-14-32) GPU-days: run it on a cluster,

    sweeper run studies/depth_vs_width.py --address auto --store s3://BUCKET/sweeps --data-root DIR

The quick variant runs the same comparison at CPU size on a 2,000-image class-balanced subset of
CIFAR-10 (500 test images) for 5 epochs at batch 32 in bf16: networks of base width 8, deeper
(ResNet-8/14/20-8) and wider (ResNet-8-8/12/16), so that both series cover about 340-780 BN
parameters; about 10 minutes on 2 CPU cores (two trials of one core each):

    sweeper run studies/depth_vs_width.py --quick --data-root ../shared/data/cifar10

The cpu variant (`--scale cpu`) is sized to show the paper's findings on a laptop: the recipe of an
independent check that already showed ResNet-32 above WRN-14-2 (10,000 class-balanced training
images, the full test set, 20 epochs, batch 128, lr 0.1 dropped at 50% and 75%, crop + flip), in
bf16, at base width 8, with three deeper/wider pairs at matched BN parameter counts (table below,
pinned by tests/test_scale.py), trained three ways: BN-only, output-only and the equal-count random
baseline, 3 seeds; 63 trials. Sized by FLOPs for about 3 hours with the cpu variants of sparsity.py
and norm_types.py on 2 cores, it alone took 7.0 trial-hours (3.5 hours two at a time) on a 2-core
machine (docs/laptop_scale.md; `sweeper plan --scale cpu --time-steps` times this machine's steps):

    sweeper run studies/depth_vs_width.py --scale cpu --data-root ../shared/data/cifar10

Run sparsity.py's cpu variant into the same store first: its 21 trials are this one's BN-only
trials, with more measured, and `run` copies them instead of training them again (sweeper.reuse).

Figures (sweeper.analysis.frankle): Fig. 1 all_vs_all_but_bn, Fig. 2 accuracy_vs_depth_width,
Fig. 3 accuracy_vs_bn_params, Fig. 4 gamma_distribution, Fig. 5 gamma_sparsity, Table 1.
"""
from sweeper import Study

DEEPER = [f"resnet-{d}" for d in (14, 32, 56, 110, 218, 434, 866)]  # ResNet-D, width 16
WIDER = [f"wrn-14-{k}" for k in (1, 2, 4, 8, 16, 32)]  # WRN-14-k, width 16k (wrn-14-1 = resnet-14)
SUBSETS = ["all", "bn", "output", "bn+output", "all-but-bn", "random"]

# The cpu variant's networks, base width 8. BN parameters: 8 (14 + 28n) for ResNet-(6n+2)-8 (stem,
# 2 per block, 2 shortcut BNs, 2 per channel each), 70 W for ResNet-14-W; `sweeper params` counts them.
#   deeper (width 8)   BN      wider (depth 14)   BN
#   resnet-14-8        560     (the two series' common start, as ResNet-14 = WRN-14-1 in the paper)
#   resnet-20-8        784     resnet-14-11       770   (-2%)
#   resnet-26-8       1008     resnet-14-14       980   (-3%)
#   resnet-32-8       1232     resnet-14-18      1260   (+2%)
# The last pair halves the width of the check's ResNet-32 / WRN-14-2 (2,464 / 2,240).
CPU_DEEPER = ["resnet-14-8", "resnet-20-8", "resnet-26-8", "resnet-32-8"]
CPU_WIDER = ["resnet-14-11", "resnet-14-14", "resnet-14-18"]
# The laptop recipe every training study's cpu variant shares (the independent check's, in bf16).
CPU_RECIPE = {
    "train_size": 10_000,  # class-balanced: 1,000 images per class
    "test_size": 0,  # the full test set (10,000 images)
    "epochs": 20,  # lr 0.1, /10 at 50% and 75% of the steps (sweeper.experiments.train.loop.lr_milestones)
    "batch_size": 128,
    "precision": "bf16",  # about 1.8x faster on a CPU with AVX-512; batch norm stays fp32
    # the test set after epochs 5, 10, 15 and 20 (the lr drops at 10 and 15), not every epoch: the
    # same final accuracy, and a pass over 10,000 test images was a third of a BN-only trial here
    "eval_every": 5,
}

study = Study(
    name="depth_vs_width",
    dataset="cifar10",
    axes={
        "model": DEEPER + WIDER,
        "trainable": SUBSETS,
        "seed": [0, 1, 2],
    },
    recipe={
        "augment": "crop_flip",
        "weight_init": "kaiming_normal",
        "bn_init": "uniform",  # γ ~ U[0, 1), β = 0
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "milestones": [0.5, 0.75],  # epochs 80 and 120
        "lr_drop": 0.1,
        "random_k": 2,  # `random` trains 2 conv weights per output channel = the BN count
    },
    measure=["bn"],
    figures=[
        "all_vs_all_but_bn",
        "accuracy_vs_depth_width",
        "accuracy_vs_bn_params",
        "gamma_distribution",
        "gamma_sparsity",
        "gamma_by_layer",  # per-layer mean |γ|, input to output
        "beta_distribution",
        "table1_params",
    ],
    resources={"cpu": 4, "gpu": 1},  # one g5.xlarge worker per trial (docs/cluster.md)
    quick={
        "axes": {
            "model": ["resnet-8-8", "resnet-14-8", "resnet-20-8", "resnet-8-12", "resnet-8-16"],
            "seed": [0, 1],
        },
        "recipe": {
            "train_size": 2000,  # class-balanced: 200 images per class
            "test_size": 500,
            "epochs": 5,
            "batch_size": 32,  # 4x the SGD steps of batch 128 for the same compute (310 steps)
            "precision": "bf16",  # about 1.5-2x faster on this CPU; batch norm stays fp32
        },
        "resources": {"cpu": 1, "gpu": 0},  # two trials at a time on 2 cores, 1 torch thread each
    },
    cpu={
        "axes": {
            "model": CPU_DEEPER + CPU_WIDER,
            # BN-only (depth vs width at equal BN count), output-only (the BN - output gap against
            # depth) and the equal-count random baseline
            "trainable": ["bn", "output", "random"],
            "seed": [0, 1, 2],
        },
        "recipe": CPU_RECIPE,
        # Fig. 1 (all vs all-but-bn) needs subsets this variant leaves out
        "figures": ["accuracy_vs_depth_width", "accuracy_vs_bn_params", "gamma_distribution", "gamma_sparsity",
                    "gamma_by_layer", "beta_distribution", "table1_params"],
        "resources": {"cpu": 1, "gpu": 0},
    },
)
