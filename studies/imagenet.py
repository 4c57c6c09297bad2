"""BN-only on ImageNet (Frankle et al. 2021, the ImageNet rows: ResNet-18 ... ResNet-200).

torchvision's ImageNet ResNets, trained two ways: all parameters and BatchNorm's γ and β only,
on full-resolution ImageNet (`imagenet224`: JPEGs streamed from an ImageFolder root with
train/<wnid>/ and val/<wnid>/, decoded by DataLoader workers; RandomResizedCrop(224) + flip,
evaluation Resize(256) + CenterCrop(224)). Recipe as open_lth trains ImageNet ResNets: SGD momentum
0.9, batch 1024, lr 0.4 (0.1 per 256 images), dropped 10x at epochs 30, 60 and 80 of 90, weight
decay 1e-4. open_lth also warms the lr up over the first 5 epochs; sweeper's schedule has no
warm-up, so the first epochs run at the full rate.

Every trial is GPU-days: run it on a cluster, with the data on every node (or a shared path):

    sweeper run studies/imagenet.py --address auto --store s3://BUCKET/sweeps --data-root /data

The quick variant checks the pipeline end to end on a laptop with any ImageNet-layout folder (a
class-balanced 1,000-image subset, 500 for evaluation, ResNet-18, 2 epochs at batch 32):

    sweeper run studies/imagenet.py --quick --data-root /data/imagenet
"""
from sweeper import Study

study = Study(
    name="imagenet",
    dataset="imagenet224",
    axes={
        "model": [f"imagenet-resnet-{d}" for d in (18, 34, 50, 101, 152, 200)],
        "trainable": ["all", "bn"],
        "seed": [0],
    },
    recipe={
        "augment": "crop_flip",  # RandomResizedCrop(224) + horizontal flip at this resolution
        "weight_init": "kaiming_normal",
        "bn_init": "uniform",  # γ ~ U[0, 1), β = 0, as in the CIFAR experiments
        "epochs": 90,
        "batch_size": 1024,
        "lr": 0.4,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "milestones": [1 / 3, 2 / 3, 8 / 9],  # epochs 30, 60, 80
        "lr_drop": 0.1,
        "precision": "bf16",  # on GPUs (README: Speed and precision)
    },
    measure=["bn"],
    figures=["accuracy_vs_bn_params", "gamma_distribution", "gamma_sparsity", "table1_params"],
    resources={"cpu": 8, "gpu": 1},  # 7 decoding workers per trial feed one GPU
    quick={
        "axes": {"model": ["imagenet-resnet-18"]},
        "recipe": {"train_size": 1000, "test_size": 500, "epochs": 2, "batch_size": 32, "lr": 0.0125,
                   "precision": "fp32"},
        "resources": {"cpu": 2, "gpu": 0},
    },
)
