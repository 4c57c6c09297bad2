"""Model families: shapes, and parameter counts by group computed from the architecture."""
import pytest
import torch

from sweeper.experiments.train.model import build_model, count
from sweeper.experiments.train.spec import TrainSpec


def resnet_counts(depth: int, width: int, classes: int = 10, in_ch: int = 3) -> dict[str, int]:
    """Frankle et al.'s CIFAR ResNet-D-W counted by hand from DESIGN.md section 4."""
    n = (depth - 2) // 6
    widths = [width, 2 * width, 4 * width]
    conv = 9 * in_ch * width
    bn_channels = width
    f_in = width
    for w in widths:
        for i in range(n):
            conv += 9 * f_in * w + 9 * w * w
            bn_channels += 2 * w
            f_in = w
    shortcut = widths[0] * widths[1] + widths[1] * widths[2]
    bn_channels += widths[1] + widths[2]
    output = widths[2] * classes + classes
    return {
        "total": conv + shortcut + 2 * bn_channels + output,
        "batchnorm": 2 * bn_channels,
        "output": output,
        "shortcut": shortcut,
    }


@pytest.mark.parametrize("model,depth,width", [
    ("resnet-14", 14, 16), ("resnet-20", 20, 16), ("resnet-32", 32, 16), ("resnet-56", 56, 16),
    ("resnet-110", 110, 16), ("resnet-218", 218, 16), ("resnet-434", 434, 16), ("resnet-866", 866, 16),
    ("wrn-14-2", 14, 32), ("wrn-14-8", 14, 128), ("wrn-14-32", 14, 512),
])
def test_cifar_resnet_counts_match_the_architecture(model, depth, width):
    counts = count(TrainSpec.from_values({"model": model, "trainable": "bn"}))
    expected = resnet_counts(depth, width)
    assert {k: counts[k] for k in expected} == expected
    assert counts["trainable"] == expected["batchnorm"]


def test_paper_table_1_values():
    # Frankle et al. Table 1 rounds these; the exact counts of the open_lth architecture:
    c = count(TrainSpec.from_values({"model": "resnet-110"}))
    assert (c["total"], c["batchnorm"], c["output"], c["shortcut"]) == (1_730_714, 8_288, 650, 2_560)
    c = count(TrainSpec.from_values({"model": "resnet-14"}))
    assert (c["total"], c["batchnorm"]) == (175_258, 1_120)


def test_imagenet_resnets_are_torchvisions():
    c = count(TrainSpec.from_values({"model": "imagenet-resnet-18"}), num_classes=1000)
    assert c["total"] == 11_689_512 and c["batchnorm"] == 9_600
    c = count(TrainSpec.from_values({"model": "imagenet-resnet-50"}), num_classes=1000)
    assert c["total"] == 25_557_032 and c["batchnorm"] == 53_120
    from torchvision.models.resnet import Bottleneck, ResNet

    reference = ResNet(Bottleneck, [3, 24, 36, 3])  # ResNet-200 (He et al. 2016b's layout)
    c = count(TrainSpec.from_values({"model": "imagenet-resnet-200"}), num_classes=1000)
    assert c["total"] == sum(p.numel() for p in reference.parameters()) == 64_673_832


@pytest.mark.parametrize("values,shape", [
    ({"model": "resnet-8-4", "dataset": "digits"}, (5, 1, 8, 8)),
    ({"model": "resnet-14-4", "dataset": "cifar10"}, (5, 3, 32, 32)),
    ({"model": "mlp-3-32", "dataset": "digits"}, (5, 1, 8, 8)),
    ({"model": "convnet-4-8", "dataset": "cifar100"}, (5, 3, 32, 32)),
])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "identity"])
def test_forward_shapes(values, shape, activation):
    spec = TrainSpec.from_values({**values, "activation": activation})
    model = build_model(spec).eval()
    out = model(torch.randn(*shape))
    classes = 100 if spec.dataset == "cifar100" else 10
    assert out.shape == (5, classes)


def test_activations_are_modules_hooks_can_see():
    from sweeper.experiments.train.measures import activation_layers

    model = build_model(TrainSpec.from_values({"model": "resnet-8-4", "dataset": "digits", "activation": "gelu"}))
    layers = activation_layers(model)
    assert len(layers) == 1 + 2 * 3  # stem + two per block, three blocks
    assert all(type(m).__name__ == "GELU" for _, m in layers)


def test_width_4_resnets_train_their_convolutions_on_any_cpu():
    """A PyTorch bug (oneDNN without AVX-512) crashed these trials' processes: the 1x1 stride-2
    shortcut of 4 input channels, trained (sweeper.experiments.train.onednn). In a subprocess, so
    that a crash fails this test rather than the test run."""
    import subprocess
    import sys

    code = """
from sweeper.experiments.train.loop import run_trial
from sweeper.experiments.train.spec import TrainSpec
for trainable in ["all", "random", "all-but-bn"]:
    s = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8", "width": 4, "epochs": 2, "batch_size": 64,
                               "augment": "none", "trainable": trainable, "seed": 0})
    print(trainable, run_trial(s, device="cpu", threads=1).row["test_acc"])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["all", "random", "all-but-bn"]
    import torch

    from sweeper.experiments.train import subsets
    from sweeper.experiments.train.model import build_model
    from sweeper.experiments.train.onednn import crashes_onednn
    from sweeper.experiments.train.spec import TrainSpec

    def crashes(device="cpu", **values):
        spec = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8", "augment": "none", **values})
        model = build_model(spec)
        subsets.apply(model, spec.trainable, spec.random_k, spec.seed)
        return crashes_onednn(model, torch.device(device))

    # only where the bug is: never a BN-only trial (frozen shortcut), never width 8, never a GPU
    assert not crashes(width=4, trainable="bn")
    assert not crashes(width=8, trainable="all")
    assert not crashes("cuda", width=4, trainable="all")
    assert crashes(width=4, trainable="all") == (not torch.cpu._is_avx512_supported())
