"""A workaround for a PyTorch bug that crashes some CPU trials.

The bug (torch 2.14.1's oneDNN on an x86 CPU without AVX-512, e.g. AVX2-only; not seen with
AVX-512): training a network with a 1x1, stride-2 convolution of 2 to 6 input channels whose
weight trains corrupts the heap ("corrupted double-linked list", "munmap_chunk(): invalid pointer",
or a silent segmentation fault, which Ray reports as "the trial's process died"). These are the
projection shortcuts of width-4 ResNets (resnet-8-4) whenever their convolutions train (`all`,
`random`, `all-but-bn`). Keeping that convolution NCHW did not help; running the trial without
oneDNN (PyTorch's own CPU kernels) did. So only such trials, only on such CPUs, run without it;
every other trial runs as before. `tests/test_models.py` trains the crashing case.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from sweeper.experiments.train import subsets
from sweeper.experiments.train.model import build_model
from sweeper.experiments.train.spec import TrainSpec
from sweeper.models import FAMILIES


def _affected(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
            and 2 <= m.in_channels <= 6 and m.weight.requires_grad)


def crashes_onednn(spec: TrainSpec, device: torch.device) -> bool:
    """Whether `spec`'s training would hit the bug on `device` (this machine's CPU)."""
    if device.type != "cpu" or torch.cpu._is_avx512_supported() or not FAMILIES[spec.family].convolutional:
        return False
    model = build_model(spec)  # cheap beside the trial; its weights are not used
    subsets.apply(model, spec.trainable, spec.random_k, spec.seed)
    return any(_affected(m) for m in model.modules())


@contextlib.contextmanager
def avoiding_onednn_bug(spec: TrainSpec, device: torch.device):
    """A context to train `spec` in: without oneDNN where the bug would crash it, else as it is.
    (Not `torch.backends.mkldnn.flags`, which also sets oneDNN's TF32 and warns about Intel GPUs.)"""
    if not crashes_onednn(spec, device):
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
