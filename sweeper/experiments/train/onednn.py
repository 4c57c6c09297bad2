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


def _affected(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
            and 2 <= m.in_channels <= 6 and m.weight.requires_grad)


def crashes_onednn(model: nn.Module, device: torch.device) -> bool:
    """Whether training `model` (its trainable subset already applied) hits the bug on `device`."""
    if device.type != "cpu" or torch.cpu._is_avx512_supported():
        return False
    return any(_affected(m) for m in model.modules())


@contextlib.contextmanager
def avoiding_onednn_bug(models: nn.Module | list[nn.Module], device: torch.device):
    """A context to train `models` in: without oneDNN where the bug would crash one of them, else as
    it is; it gives whether it turned oneDNN off. (Not `torch.backends.mkldnn.flags`, which also sets
    oneDNN's TF32 and warns about Intel GPUs.)"""
    models = models if isinstance(models, list) else [models]
    if not any(crashes_onednn(m, device) for m in models):
        yield False
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield True
    finally:
        torch.backends.mkldnn.enabled = before
