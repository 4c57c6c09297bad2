"""Quickstart: BN-only versus full training of small CIFAR ResNets on scikit-learn's digits.

Runs in about two minutes on 2 CPU cores with no data to download. Every axis and recipe value
is spelled out so that this file doubles as documentation of what a study can set.
"""
from sweeper import Study

study = Study(
    name="quickstart",
    experiment="train",  # SGD training of a chosen subset (Frankle et al.)
    dataset="digits",  # 8x8 grey digits shipped with scikit-learn: 1,442 train / 355 test images
    axes={
        # grid axes: every combination is one trial
        "depth": [8, 14],  # CIFAR ResNet-D, D = 6n+2
        "width": [8, 16],  # channels of the first stage (16 is the paper's ResNet; 16k is WRN-D-k)
        "trainable": ["all", "bn", "output"],  # which parameters SGD may move
        "seed": [0],  # the seed is an axis like any other
    },
    recipe={
        # fixed for every trial
        "family": "resnet",
        "activation": "relu",
        "norm": "batch",
        "weight_init": "kaiming_normal",  # conv/linear weights, He et al. fan-in
        "bn_init": "uniform",  # γ ~ U[0, 1), β = 0 (the paper's choice)
        "augment": "none",  # flipping digits changes them; crops of 8x8 images are too coarse
        "epochs": 15,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "milestones": [0.5, 0.75],  # lr /10 at 50% and 75% of training (80 and 120 of 160 epochs)
        "lr_drop": 0.1,
        "precision": "fp32",  # or bf16: autocast, batch norm kept in fp32 (see the README)
        "compile": "none",  # torch.compile backend for the steps: none, inductor (GPUs), aot_eager
    },
    measure=["bn"],  # every γ and β per channel -> table `bn`
    figures=["accuracy_vs_bn_params"],
    resources={"cpu": 1, "gpu": 0},  # per trial; two trials share a 2-core laptop
    quick={"axes": {"depth": [8], "width": [8]}, "recipe": {"epochs": 3}},
)
